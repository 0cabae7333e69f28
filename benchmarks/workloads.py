"""What the benchmark runs on: the models, the examples, the batches.

Models (``CONFIGS``):

* ``default``: the embedded SmolLM2-135M-Instruct (30 layers, width 576, FFN 1536, 9 heads, 3
  key/value heads, vocabulary 49,152), float32, as ``layergrad.models.load_model("default")`` gives it;
* ``wide``: a random-weight Llama of width 2048, FFN 5632, 32 heads, 4 key/value heads and 4 layers,
  float32, with the default model's tokenizer (random weights are enough for timing; the seed is fixed).

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
CONFIGS = ("default", "wide")
WIDE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=4, num_attention_heads=32, num_key_value_heads=4)


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


def load_workload(name: str, seed: int = 0) -> Workload:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from layergrad.models import load_model

    default = load_model("default", dtype="float32")
    if name == "default":
        cfg = default.model.config
        desc = (f"SmolLM2-135M-Instruct (embedded default), {cfg.num_hidden_layers} layers, width {cfg.hidden_size}, "
                f"FFN {cfg.intermediate_size}, {cfg.num_attention_heads} heads / {cfg.num_key_value_heads} kv, fp32")
        return Workload(default.model.eval(), default.tokenizer, desc, cfg.num_hidden_layers, cfg.hidden_size)
    if name != "wide":
        raise ValueError(f"unknown configuration {name!r}; choose one of {', '.join(CONFIGS)}")
    tok = default.tokenizer
    del default
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **WIDE)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    desc = (f"random-weight Llama, {WIDE['num_hidden_layers']} layers, width {WIDE['hidden_size']}, FFN {WIDE['intermediate_size']}, "
            f"{WIDE['num_attention_heads']} heads / {WIDE['num_key_value_heads']} kv, vocabulary {len(tok)} (untied), fp32, seed {seed}")
    return Workload(model, tok, desc, WIDE["num_hidden_layers"], WIDE["hidden_size"])


def load_examples(per_file: int, data_dir: Path | None = None) -> tuple[list, str]:
    """The first ``per_file`` examples of each GSM8K file, or synthetic ones; and where they came from."""
    from layergrad.data import load_examples as read

    data_dir = Path(data_dir) if data_dir else default_data_dir()
    paths = [data_dir / f for f in DATA_FILES]
    if all(p.exists() for p in paths):
        out = []
        for p in paths:
            exs, _ = read([str(p)])
            out.extend(exs[:per_file])
        return out, f"GSM8K Simplified CoT and Detailed CoT ({', '.join(DATA_FILES)} in {data_dir}), first {per_file} of each"
    import tempfile

    from layergrad.synthetic import write_dataset

    folder = Path(tempfile.mkdtemp(prefix="layergrad-bench-"))
    files = write_dataset(folder, n=max(per_file, 1))
    out = []
    for style in ("short_rationale", "detailed"):
        exs, _ = read([str(files[style])])
        out.extend(exs[:per_file])
    missing = ", ".join(str(p) for p in paths if not p.exists())
    return out, f"SYNTHETIC short-rationale and detailed responses (layergrad.synthetic): real data not found ({missing})"


def encode_all(examples, tokenizer, max_length: int = 1024):
    from layergrad.prompting import encode

    mode = "chat" if getattr(tokenizer, "chat_template", None) else "base"  # the engine's "auto"
    encs = [encode(ex, tokenizer, mode, max_length) for ex in examples]
    keep = [(ex, e) for ex, e in zip(examples, encs) if e.skip_reason is None]
    return [k[0] for k in keep], [k[1] for k in keep], mode


def make_batches(encs, batch_size: int, max_batch_tokens: int = 8192) -> list[list[int]]:
    """Positions of ``encs`` per batch, as the engine plans them (grouped by length, longest first)."""
    from layergrad.batching import plan_batches

    return [list(b.items) for b in plan_batches([e.n_tokens for e in encs], batch_size, max_batch_tokens)]
