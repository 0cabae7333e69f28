"""``layergrad run``: the command, its flags (one per :class:`~layergrad.config.RunConfig` field), the
drop-in flags of the paper's ``get_gradient_values.py``, and ``--config`` TOML files.

Flags are parsed into one :class:`~layergrad.config.RunConfig`, validated before any model loads;
the layers below take typed values. Heavy imports (torch, transformers) happen in the handler,
so ``--help`` is instant.
"""
from __future__ import annotations

import argparse

from layergrad import vocab
from layergrad.errors import LayergradError

RUN_EXAMPLES = """examples:
  layergrad run --data gsm8k_train_with_cot.json --out runs/cot
  layergrad run --model meta-llama/Llama-3.1-8B --data a.json b.jsonl --modules attn --batch-size 4 --out runs/x
  layergrad run --model Qwen/Qwen2.5-0.5B@main --cache-dir /data/hf --data a.json --out runs/q
  layergrad run --model path/to/local/folder --data a.json --out runs/local
  layergrad run --model model.gguf --data chat.jsonl --prompt-mode chat --spectrum-k all --out runs/chat
  layergrad run --data chats.jsonl --turns all --system-prompt template --out runs/turns
  layergrad run --data with_cot.json --truncate-to runs/no_cot --out runs/cot_cut   # equal length (docs/length-control.md)

drop-in for the paper's script (same flags, same JSON-lines output):
  layergrad run --data_path D.json --save_path S.jsonl --model_name_or_path meta-llama/Meta-Llama-3.1-8B --max_length 1024 [--cache_dir DIR] [--run_instruct_version]

drop-in for the follow-up paper's get_grad_vector_initial_try.py (every singular value, layer x layer cosines):
  layergrad run --format unified --data_path D.json --save_path S.jsonl --model_name_or_path Qwen/Qwen2.5-1.5B --max_length 4096 [--run_instruct_version]
"""


def _default(name: str) -> str:
    """A RunConfig field's default, as the help texts state it (stated once: in RunConfig)."""
    from layergrad.config import RunConfig

    value = RunConfig.field_default(name)
    return "all" if name == "spectrum_k" and value is None else str(value)


#: ``layergrad run`` flags by RunConfig field (the dest of every flag is its field's name);
#: tests/test_config.py checks that every field has one (or is in config.NO_FLAG) and that
#: every "(default X)" in a help text is the field's default.
def add_parser(sub) -> None:
    from layergrad.inputs.data.formats import DESCRIPTION

    D = _default
    p = sub.add_parser(
        "run",
        help="compute per-example, per-module gradient spectra and store them",
        description="Compute, for every example and every selected linear module, the singular values of the "
        "example's fine-tuning gradient and their metrics; store them under --out. Rerunning resumes.",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="default", help="hub id org/name or org/name@REV, HF folder, .gguf file, or 'default' "
                   "(embedded SmolLM2-135M-Instruct); hub ids go through the Hugging Face cache (HF_HOME, HF_TOKEN, HF_HUB_OFFLINE)")
    p.add_argument("--revision", default=None, help="hub models: branch, tag or commit (if not given: main)")
    p.add_argument("--cache-dir", "--cache_dir", dest="cache_dir", default=None,
                   help="hub models: the Hugging Face cache folder, as transformers' cache_dir (if not given: HF_HOME's)")
    p.add_argument("--adapter", default=None, help="a PEFT (LoRA) adapter folder or hub id; measured merged into the base "
                   "(as peft's merge_and_unload writes it). --model ADAPTER_DIR also works: its config names the base")
    p.add_argument("--adapter-params", action="store_true", default=None,
                   help="measure the adapter's own matrices (lora_A, lora_B of each adapted module; roles q.lora_A, ...) "
                   "instead of the merged weights")
    p.add_argument("--data", nargs="+", help=f"data: {DESCRIPTION}")
    p.add_argument("--split", default=None, help="datasets folders and hub datasets: the split (if not given: the only one, else train)")
    p.add_argument("--subset", default=None, help="datasets folders and hub datasets: the subset (config name)")
    p.add_argument("--data-revision", default=None, help="hub datasets: branch, tag or commit (or --data org/name@REV)")
    p.add_argument("--out", help="run directory (created; rerun to resume)")
    p.add_argument("--config", help="a TOML file with these options, by their RunConfig names (batch_size = 4), at the top "
                   "or in a [run] table; command-line flags override it. Relative data paths in the file are relative "
                   "to the file's folder; those on the command line to the current folder")
    p.add_argument("--group", help="group label (default: each data file's name)")
    p.add_argument("--prompt-mode", choices=list(vocab.PROMPT_MODES), default=None, help="base: prompt+'\\n'+response; chat: chat template; auto: chat if the tokenizer has a template (default " + D("prompt_mode") + ")")
    p.add_argument("--system-prompt", default=None, metavar="TEXT|none|template",
                   help="chat mode, every record without a system turn of its own (Alpaca and messages alike): TEXT, "
                   "none (no system text) or template (the chat template's own default); a record's own system turn "
                   f"always wins (default {D('system_prompt')})")
    p.add_argument("--turns", choices=list(vocab.TURNS), default=None,
                   help="messages records: last (the last assistant turn is the response) or all (every assistant turn's "
                   f"tokens are response tokens, the rest masked: assistant-only SFT loss; no IFD) (default {D('turns')})")
    p.add_argument("--modules", default=None, help=f"attn | mlp | all | reference | roles, e.g. q,k,v,o or all,lm_head (default {D('modules')})")
    p.add_argument("--max-length", type=int, default=None, help=f"truncate texts to this many tokens (default {D('max_length')})")
    p.add_argument("--batch-size", type=int, default=None, help=f"examples per padded batch (default {D('batch_size')})")
    p.add_argument("--max-batch-tokens", type=int, default=None, help=f"cap on batch size x longest sequence (default {D('max_batch_tokens')})")
    p.add_argument("--max-memory", default=None, metavar="SIZE|FRACTION",
                   help="memory the run may use, weights included: a size with its unit (12GB, 12GiB, 500MiB, 4096B), or "
                   "a fraction of the memory available at the start, in (0, 1] (0.8); batches whose estimated peak exceeds "
                   "it are split, an example that cannot fit alone is stored as failed without running, and a rerun "
                   "retries it (default: 0.8 of the available CPU or GPU memory)")
    p.add_argument("--limit", type=int, default=None, help="first N examples of each data file (default: all)")
    p.add_argument("--dtype", default=None, help=f"model dtype: auto, fp32, bf16, fp16, fp64 (default {D('dtype')})")
    p.add_argument("--stats-dtype", choices=sorted(set(vocab.STATS_DTYPES.values())), default=None,
                   help=f"precision of the statistics (default {D('stats_dtype')}; float32 statistics use the float64 Gram path)")
    p.add_argument("--device", default=None, help=f"cpu, cuda, cuda:1, mps or auto (default {D('device')})")
    p.add_argument("--device-map", default=None, help="'auto' spreads a large model over the visible GPUs (accelerate)")
    p.add_argument("--spectrum-k", default=None, help=f"singular values stored per module: a number or 'all' (default {D('spectrum_k')})")
    p.add_argument("--elementwise", action="store_true", default=None, help="also M_mean/M_max/M_min of the dense gradient (slower)")
    p.add_argument("--cosine", action="store_true", default=None, help="cosine similarity of gradients: next layer, q~o, k~v")
    p.add_argument("--cosine-layers", action="store_true", default=None,
                   help="--cosine and also every pair of layers of one role (kinds gap2, gap3, ...: the layer x layer "
                   "matrices of the follow-up paper's script), from the factors: L^2/2 products of (T x T) matrices per role")
    p.add_argument("--token-shares", action="store_true", default=None,
                   help="also each token's share <d_t x_t^T, G> / |G|^2 of the gradient, per depth third and module group "
                   "(attn, mlp): one (T x T) product per example and module; the report shows where in the response it lies")
    p.add_argument("--ifd", nargs="?", const=True, default=None, metavar="{cherry,superfiltering}",
                   help="also IFD scores (one extra forward pass per batch, no backward) by the named published definition: "
                   "cherry (Cherry_LLM: every response token scored with and without the prompt, the response alone "
                   "after '### Response:') or superfiltering (the response alone with no context: without a BOS its "
                   "first token is scored with the prompt only). --ifd alone: cherry, the definition of the paper that "
                   "introduced IFD, whose two means cover the same tokens for every tokenizer")
    p.add_argument("--retry-failed", dest="retry", action="store_const", const="all", default=None,
                   help="retry every stored failed example (by default a rerun retries those that failed for a reason "
                   "that can change: out of memory, over --max-memory; not non-finite values)")
    p.add_argument("--no-retry", dest="retry", action="store_const", const="none",
                   help="keep every stored failed example as it is")
    p.add_argument("--add-data", action="store_true", default=None,
                   help="add --data files other than those the run directory holds (without it a run of other files "
                   "is refused; more of the same files, a larger --limit or another --shard grow a run as they are)")
    p.add_argument("--skip-invalid", action="store_true", default=None, help="run the valid records, store invalid ones with their reason")
    p.add_argument("--trust-remote-code", action="store_true", default=None, help="allow a model folder's own Python code (transformers' trust_remote_code)")
    p.add_argument("--method", choices=list(vocab.METHODS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--eig-batch", choices=list(vocab.EIG_BATCH), default=None,
                   help=f"solve the eigenproblems of a batch's examples and modules together (auto: on CUDA; default {D('eig_batch')})")
    p.add_argument("--gram-precision", choices=list(vocab.GRAM_PRECISIONS), default=None,
                   help="arithmetic of the float32 statistics: float64 (Gram matrices and eigensolver in float64, each "
                   "singular value within ~1e-8 of the largest) or float32-qr (for GPUs with weak FP64: repeated token "
                   "rows merged exactly, then QR and SVD in float32, the largest values refined in float64; measured on SmolLM2 "
                   f"within 4.6e-7 of the largest singular value and 4.6e-7 relative on every statistic; see BENCHMARKS.md); "
                   f"default {D('gram_precision')}")
    p.add_argument("--truncate-response", type=int, default=None, metavar="K",
                   help="cut each example's response after its first K response tokens (token ids, after tokenisation; "
                   "the prompt is kept whole; a response of at most K tokens stays as it is). For a causal LM this is "
                   "exactly the gradient of the response as far as its K-th token (docs/length-control.md)")
    p.add_argument("--truncate-to", default=None, metavar="RUN_DIR",
                   help="cut each example's response to the length (n_response_tokens) of its partner in RUN_DIR, an "
                   "already computed run: the example with the same pair_key, else the same instruction text. An example "
                   "without a usable partner is stored as skipped with its reason (docs/length-control.md)")
    p.add_argument("--shard", default=None, help="i/N: take shard i of N (job arrays); merge with 'layergrad merge'")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (neither the run's nor the model loading's)")
    # the paper's flags (drop-in mode)
    g = p.add_argument_group("drop-in flags of the paper's get_gradient_values.py (and, with --format unified, of the "
                             "follow-up's get_grad_vector_initial_try.py)")
    g.add_argument("--format", choices=["reference", "unified"], default=None,
                   help="drop-in mode's script and output: reference (get_gradient_values.py: S_sum, S_max, S_min) or "
                   "unified (get_grad_vector_initial_try.py: S_list, cosine_sim, cosine_sim_qkvo; default --max_length "
                   "2048 as that script's) (default reference)")
    g.add_argument("--data_path", help="data file (drop-in mode: with --save_path)")
    g.add_argument("--save_path", help="JSON-lines output in the paper's format; the run directory is SAVE_PATH.layergrad")
    g.add_argument("--model_name_or_path", help="as --model")
    g.add_argument("--max_length", type=int, help="as --max-length (if not given: 1024; --format unified: 2048, the scripts' own)")
    g.add_argument("--run_instruct_version", action="store_true", help="chat template (else base prompts)")
    g.add_argument("--start_idx_ratio", type=float, default=0, help="first record: a ratio (<= 1) or an index (> 1)")
    g.add_argument("--end_idx_ratio", type=float, default=-1, help="end record: a ratio (<= 1) or an index (> 1); -1: the end")
    g.add_argument("--run_scratch_version", action="store_true", help="refused: the follow-up's script re-initialises the "
                   "weights unseeded (model.init_weights()); save such a model and pass its folder instead")
    p.set_defaults(func=cmd_run)


#: Fields whose flag's value goes to RunConfig as it is (dest = field name); the others are handled below.
_PLAIN_FLAGS = ("data", "out", "group", "prompt_mode", "system_prompt", "turns", "modules", "max_length", "batch_size", "max_batch_tokens", "max_memory", "limit",
                "dtype", "stats_dtype", "device", "device_map", "elementwise", "cosine", "cosine_layers", "token_shares", "ifd", "skip_invalid",
                "trust_remote_code", "method", "eig_batch", "gram_precision", "shard", "truncate_response", "truncate_to", "revision", "cache_dir",
                "split", "subset", "data_revision", "adapter", "adapter_params", "retry", "add_data")


def read_config_file(path: str) -> dict:
    """The run options of a TOML file (top-level keys and/or a ``[run]`` table); relative data paths
    become relative to the file's folder. Raises :class:`ConfigError` naming the file."""
    import os
    import tomllib

    from layergrad.errors import ConfigError

    try:
        with open(path, "rb") as fh:
            conf = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path}: is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(f"--config {path}: permission denied") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e} (strings need quotes: modules = \"attn\")") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML (not UTF-8 text: {e})") from None
    run = conf.pop("run", None)
    if run is not None:
        if not isinstance(run, dict):
            raise ConfigError(f"{path}: 'run' must be a table ([run]) of run options, got {run!r}")
        both = sorted(set(run) & set(conf))
        if both:
            raise ConfigError(f"{path}: {', '.join(map(repr, both))} set both at the top and in [run]; keep one")
        conf.update(run)
    data = conf.get("data")
    base = os.path.dirname(path)
    if isinstance(data, str):
        data = [data]
    if isinstance(data, list):
        conf["data"] = [os.path.normpath(os.path.join(base, p)) if isinstance(p, str) and not os.path.isabs(p) and base else p
                        for p in data]
    return conf


#: What drop-in mode sets (over a config file's values).
DROPIN_KEYS = ("data", "out", "model", "prompt_mode", "modules", "reference", "elementwise", "max_length", "spectrum_k", "record_slice",
               "cosine", "cosine_layers")


def _refuse_foreign_output(save_path: str) -> None:
    """Drop-in mode writes SAVE_PATH from its run directory SAVE_PATH.layergrad (the resume is by that
    store's example ids). A non-empty SAVE_PATH without it was written by something else (the paper's own
    script): refuse rather than replace it."""
    import os

    from layergrad.errors import ConfigError

    if os.path.isfile(save_path) and os.path.getsize(save_path) > 0 and not os.path.isdir(save_path + ".layergrad"):
        raise ConfigError(
            f"--save_path {save_path} already holds results and there is no {save_path}.layergrad run directory beside it, "
            "so they were not written by layergrad and would be replaced; move the file aside (or `layergrad import` it "
            "to analyse it here) and rerun")


def _run_config(a):
    from layergrad.config import RunConfig, parse_spectrum_k
    from layergrad.errors import ConfigError

    opts: dict = {}
    if a.config:
        opts.update(read_config_file(a.config))
    origins = {k: a.config for k in opts}  # what a problem names: the file, else the flag
    problems: list[str] = []
    dropin = a.data_path is not None or a.save_path is not None
    if (a.format or a.run_scratch_version) and not dropin:
        raise ConfigError("--format and --run_scratch_version are drop-in flags: use them with --data_path and --save_path")
    if a.run_scratch_version:
        raise ConfigError("--run_scratch_version is not supported: the follow-up's script calls model.init_weights() with no "
                          "seed, so its numbers cannot be reproduced; build the from-scratch model once "
                          "(AutoModelForCausalLM.from_config(config), save_pretrained(DIR)) and pass --model_name_or_path DIR")
    if dropin:
        if not (a.data_path and a.save_path):
            raise ConfigError("drop-in mode needs both --data_path and --save_path")
        _refuse_foreign_output(a.save_path)
        unified = a.format == "unified"
        opts.update(
            data=[a.data_path],
            out=a.save_path + ".layergrad",
            model=a.model_name_or_path or a.model,
            prompt_mode="chat" if a.run_instruct_version else "base",
            modules="reference",
            reference=True,
            elementwise=True,
            max_length=a.max_length if a.max_length is not None else (2048 if unified else 1024),
            spectrum_k=None if unified else 0,  # unified: every singular value (S_list)
            cosine=unified,
            cosine_layers=unified,  # the layer x layer matrices, from the factors
        )
        if a.start_idx_ratio or a.end_idx_ratio != -1:
            opts["record_slice"] = [a.start_idx_ratio, a.end_idx_ratio]
        origins = {k: v for k, v in origins.items() if k not in DROPIN_KEYS}
    flags = {name: getattr(a, name) for name in _PLAIN_FLAGS}
    if dropin:
        flags["max_length"] = None  # --max_length is drop-in mode's own (set above)
    if not dropin and a.model != "default":
        flags["model"] = a.model
    if a.spectrum_k is not None:
        try:
            flags["spectrum_k"] = parse_spectrum_k(a.spectrum_k)
        except ConfigError as e:
            problems.append(str(e))
    flags = {k: v for k, v in flags.items() if v is not None}
    if a.no_progress:
        flags["progress"] = False
    opts.update(flags)
    origins = {k: v for k, v in origins.items() if k not in flags}
    try:
        cfg = RunConfig.from_dict(opts, origins=origins)
    except ConfigError as e:
        raise ConfigError(problems + e.problems) from None
    if problems:
        raise ConfigError(problems)
    return cfg, ((a.save_path, a.format or "reference") if dropin else None)


class NothingMeasured(LayergradError):
    """A run in which no example was measured: the command fails (exit 1), after storing what it could."""

    exit_code = 1


def cmd_run(a) -> int:
    from layergrad.run import engine
    from layergrad.store.paper import export_reference

    cfg, dropin = _run_config(a)
    s = engine.run(cfg)
    if s.rank:  # under torchrun rank 0 alone reports the whole store and exports it, after the final barrier
        print(f"[rank {s.rank}/{s.world_size}] computed {s.computed} examples now; {s.seconds:.1f} s")
        return 0
    counts = ", ".join(f"{v} {k}" for k, v in sorted(s.status_counts.items()))
    stored = sum(s.status_counts.values()) or s.total  # the counts cover the whole store, invalid records too: they add up
    print(f"{s.out}: {stored} examples ({counts}); computed {s.computed} now, {s.skipped_done} were already stored; {s.seconds:.1f} s")
    for line in s.notes:
        print(line)
    if s.failures:
        print(f"failed: {s.failures}; a rerun retries those that can change (out of memory), --retry-failed all of them")
    if s.status_counts and not s.status_counts.get("ok"):
        raise NothingMeasured(f"no example of {s.out} was measured ({counts}"
                              f"{'; failed: ' + s.failures if s.failures else ''}); see the reasons above, "
                              "fix their cause and rerun the same command")
    if dropin:
        save_path, fmt = dropin
        n, _ = export_reference(cfg.out, save_path, fmt)
        print(f"wrote {n} lines to {save_path} ({'the follow-up paper' if fmt == 'unified' else 'the paper'}'s format)")
    return 0
