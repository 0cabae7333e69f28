"""The ``layergrad`` command. Heavy imports (torch, transformers) happen inside commands,
so ``layergrad --help`` is instant."""
from __future__ import annotations

import argparse
import sys

RUN_EXAMPLES = """examples:
  layergrad run --data gsm8k_train_with_cot.json --out runs/cot
  layergrad run --model path/to/Llama-3.1-8B --data a.json b.jsonl --modules attn --batch-size 4 --out runs/x
  layergrad run --model model.gguf --data chat.jsonl --prompt-mode chat --spectrum-k all --out runs/chat

drop-in for the paper's script (same flags, same JSON-lines output):
  layergrad run --data_path D.json --save_path S.jsonl --model_name_or_path M --max_length 1024 [--run_instruct_version]
"""


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="compute per-example, per-module gradient spectra and store them",
        description="Compute, for every example and every selected linear module, the singular values of the "
        "example's fine-tuning gradient and their metrics; store them under --out. Rerunning resumes.",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="default", help="HF folder, .gguf file, or 'default' (embedded SmolLM2-135M-Instruct)")
    p.add_argument("--data", nargs="+", help="data files: Alpaca .json/.jsonl/.parquet or chat 'messages' records")
    p.add_argument("--out", help="run directory (created; rerun to resume)")
    p.add_argument("--config", help="a TOML file with these options (command-line flags override it)")
    p.add_argument("--group", help="group label (default: each data file's name)")
    p.add_argument("--prompt-mode", choices=["auto", "base", "chat"], default=None, help="base: prompt+'\\n'+response; chat: chat template; auto: chat if the tokenizer has a template")
    p.add_argument("--modules", default=None, help="attn | mlp | all | reference | roles, e.g. q,k,v,o or all,lm_head (default all)")
    p.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens (default 1024)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per padded batch (default 8)")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="cap on batch size x longest sequence (default 8192)")
    p.add_argument("--limit", type=int, default=None, help="first N examples of each data file")
    p.add_argument("--dtype", default=None, help="model dtype: auto, fp32, bf16, fp16, fp64")
    p.add_argument("--stats-dtype", choices=["float32", "float64"], default=None, help="precision of the statistics (default float32)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--device-map", default=None, help="'auto' spreads a large model over the visible GPUs (accelerate)")
    p.add_argument("--spectrum-k", default=None, help="singular values stored per module: a number or 'all' (default 64)")
    p.add_argument("--elementwise", action="store_true", default=None, help="also M_mean/M_max/M_min of the dense gradient (slower)")
    p.add_argument("--cosine", action="store_true", default=None, help="cosine similarity of gradients: next layer, q~o, k~v")
    p.add_argument("--ifd", nargs="?", const=True, default=None, metavar="{cherry,superfiltering}",
                   help="also IFD scores (one extra forward pass per batch, no backward) by the named published definition: "
                   "cherry (Cherry_LLM: every response token scored with and without the prompt, the response alone "
                   "after '### Response:') or superfiltering (the response alone with no context: without a BOS its "
                   "first token is scored with the prompt only). --ifd alone: cherry, the definition of the paper that "
                   "introduced IFD, whose two means cover the same tokens for every tokenizer")
    p.add_argument("--skip-invalid", action="store_true", default=None, help="run the valid records, store invalid ones with their reason")
    p.add_argument("--trust-remote-code", action="store_true", default=None)
    p.add_argument("--method", choices=["auto", "factored", "dense"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--shard", default=None, help="i/N: take shard i of N (job arrays); merge with 'layergrad merge'")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # the paper's flags (drop-in mode)
    g = p.add_argument_group("drop-in flags of the paper's get_gradient_values.py")
    g.add_argument("--data_path")
    g.add_argument("--save_path")
    g.add_argument("--model_name_or_path")
    g.add_argument("--max_length", type=int)
    g.add_argument("--run_instruct_version", action="store_true")
    g.add_argument("--start_idx_ratio", type=float, default=0)
    g.add_argument("--end_idx_ratio", type=float, default=-1)
    g.add_argument("--cache_dir", help="accepted and ignored (no hub here)")
    p.set_defaults(func=cmd_run)


def _run_config(a):
    from .config import RunConfig

    opts: dict = {}
    if a.config:
        import tomllib

        with open(a.config, "rb") as fh:
            opts.update(tomllib.load(fh))
    dropin = a.data_path is not None or a.save_path is not None
    if dropin:
        if not (a.data_path and a.save_path):
            raise SystemExit("layergrad run: drop-in mode needs both --data_path and --save_path")
        opts.update(
            data=[a.data_path],
            out=a.save_path + ".layergrad",
            model=a.model_name_or_path or a.model,
            prompt_mode="chat" if a.run_instruct_version else "base",
            modules="reference",
            reference=True,
            elementwise=True,
            max_length=a.max_length if a.max_length is not None else 1024,
            spectrum_k=0,
        )
        if a.start_idx_ratio or a.end_idx_ratio != -1:
            opts["record_slice"] = [a.start_idx_ratio, a.end_idx_ratio]
    flags = {
        "data": a.data, "out": a.out, "group": a.group, "prompt_mode": a.prompt_mode, "modules": a.modules,
        "max_length": a.max_length if not dropin else None, "batch_size": a.batch_size,
        "max_batch_tokens": a.max_batch_tokens, "limit": a.limit, "dtype": a.dtype, "stats_dtype": a.stats_dtype,
        "device": a.device, "device_map": a.device_map, "elementwise": a.elementwise, "cosine": a.cosine,
        "ifd": a.ifd, "skip_invalid": a.skip_invalid, "trust_remote_code": a.trust_remote_code,
        "method": a.method, "shard": a.shard,
    }
    if not dropin and a.model != "default":
        flags["model"] = a.model
    if a.spectrum_k is not None:
        flags["spectrum_k"] = None if a.spectrum_k == "all" else int(a.spectrum_k)
    opts.update({k: v for k, v in flags.items() if v is not None})
    if a.no_progress:
        opts["progress"] = False
    missing = [k for k in ("data", "out") if not opts.get(k)]
    if missing:
        raise SystemExit(f"layergrad run: missing --{' and --'.join(missing)} (see layergrad run --help)")
    return RunConfig.from_dict(opts), (a.save_path if dropin else None)


def cmd_run(a) -> int:
    from . import engine
    from .reference import export_reference

    cfg, save_path = _run_config(a)
    s = engine.run(cfg)
    if s.rank:  # under torchrun rank 0 alone reports the whole store and exports it, after the final barrier
        print(f"[rank {s.rank}/{s.world_size}] computed {s.computed} examples now; {s.seconds:.1f} s")
        return 0
    counts = ", ".join(f"{v} {k}" for k, v in sorted(s.status_counts.items()))
    print(f"{s.out}: {s.total} examples ({counts}); computed {s.computed} now, {s.skipped_done} were already stored; {s.seconds:.1f} s")
    if save_path:
        n, _ = export_reference(cfg.out, save_path)
        print(f"wrote {n} lines to {save_path} (the paper's format)")
    return 0


def cmd_modules(a) -> int:
    from .models import load_model
    from .modules import find_targets

    lm = load_model(a.model, trust_remote_code=a.trust_remote_code)
    targets = find_targets(lm.model, a.modules)
    print(f"{'module':<48} {'layer':>5} {'role':<8} {'out x in':>13}")
    for t in targets:
        print(f"{t.name:<48} {t.layer:>5} {t.role:<8} {f'{t.out_features} x {t.in_features}':>13}")
    print(f"{len(targets)} modules ({a.modules}) of {type(lm.model).__name__}")
    return 0


def cmd_export(a) -> int:
    from .reference import export_reference

    n, missing = export_reference(a.dir, a.to)
    print(f"wrote {n} examples to {a.to}")
    if missing:
        print(f"note: {missing} module rows have no M_mean/M_max/M_min (null); rerun with --elementwise to compute them", file=sys.stderr)
    return 0


def cmd_import(a) -> int:
    from .reference import import_reference

    n = import_reference(a.file, a.to, group=a.group)
    print(f"imported {n} examples into {a.to}")
    return 0


def cmd_validate(a) -> int:
    from .data import Fields, validate

    problems = validate(a.data, fields=Fields())
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) in {len(a.data)} file(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(a.data)} file(s), no problems")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layergrad", description="Per-example, layer-wise gradient spectra of LLM fine-tuning data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub)

    p = sub.add_parser("modules", help="list the modules that would be measured", epilog="example:\n  layergrad modules default --modules attn", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="HF folder, .gguf file or 'default'")
    p.add_argument("--modules", default="all")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=cmd_modules)

    p = sub.add_parser("export", help="write a run in the paper's JSON-lines format", epilog="example:\n  layergrad export runs/cot --format reference --to cot.jsonl", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("--format", choices=["reference"], default="reference")
    p.add_argument("--to", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="read the paper's JSON-lines output into a run directory", epilog="example:\n  layergrad import old_results.jsonl --to runs/old", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    p.add_argument("--to", required=True)
    p.add_argument("--group")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("validate", help="list every problem in data files", epilog="example:\n  layergrad validate data/*.json", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+")
    p.set_defaults(func=cmd_validate)

    for mod in ("layergrad.report.cli", "layergrad.experiment", "layergrad.merge_cli", "layergrad.selection_cli"):
        __import__(mod, fromlist=["add_parser"]).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "func", None):
        parser.print_help()
        return 2
    from .errors import friendly

    return friendly(a.func, a)


if __name__ == "__main__":
    sys.exit(main())
