"""``layergrad export`` and ``layergrad import``: a run directory to and from the JSON lines of the
paper's ``get_gradient_values.py`` (:mod:`layergrad.store.paper`). Heavy imports in the handlers."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run in the paper's JSON-lines format",
                       description="Write a run directory's results as the JSON lines of the paper's get_gradient_values.py "
                       "(one line per example, its modules' metrics by name), for tools that read that format.",
                       epilog="example:\n  layergrad export runs/cot --format reference --to cot.jsonl", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="run directory of `layergrad run` (its --out)")
    p.add_argument("--format", choices=["reference", "unified"], default="reference",
                   help="output format: reference (the paper's get_gradient_values.py) or unified (the follow-up's "
                   "get_grad_vector_initial_try.py: S_list, cosine_sim, cosine_sim_qkvo; needs a run with --spectrum-k all "
                   "and --cosine-layers for every value) (default reference)")
    p.add_argument("--to", required=True, help="output file (.jsonl)")
    p.add_argument("--force", action="store_true", help="replace --to if it exists (default: refuse)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="read the paper's JSON-lines output into a run directory",
                       description="Read the JSON-lines output of the paper's get_gradient_values.py (or of the follow-up's "
                       "get_grad_vector_initial_try.py: told apart by its S_list) into a new layergrad run directory, so that "
                       "`layergrad report` and `layergrad select` can use it.",
                       epilog="examples:\n  layergrad import old_results.jsonl --to runs/old\n"
                       "  layergrad import llama_chat.jsonl --to runs/old_chat --tokenizer meta-llama/Llama-3.1-8B-Instruct --prompt-mode chat",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="the paper's JSON-lines file")
    p.add_argument("--to", required=True, help="run directory to create")
    p.add_argument("--group", help="group label of the imported examples (default: the file's name without its suffix)")
    p.add_argument("--tokenizer", default="default", metavar="NAME_OR_FOLDER",
                   help="the tokenizer of the model the file was computed with (hub id, model or tokenizer folder, .gguf "
                   "file): each example's response length in tokens is counted with it, as the paper's script tokenised "
                   "the text, so the analysis can control for length (docs/length-control.md); 'none': no lengths "
                   "(default: default, the embedded SmolLM2-135M-Instruct's)")
    p.add_argument("--prompt-mode", choices=["base", "chat"], default="base",
                   help="how the paper's script built the text: base (instruction + newline + output) or chat "
                   "(--run_instruct_version: the chat template) (default base)")
    p.add_argument("--max-length", type=int, default=1024,
                   help="the script's --max_length: texts were cut at this many tokens (default 1024)")
    p.set_defaults(func=cmd_import)


def cmd_export(a) -> int:
    from layergrad.cli.outputs import refuse_existing
    from layergrad.store.paper import export_reference

    refuse_existing([a.to], a.force)
    n, missing = export_reference(a.dir, a.to, a.format)
    print(f"wrote {n} examples to {a.to}")
    if missing and a.format == "unified":
        print(f"note: {missing} cosine entries are null: the run has no cosine of those pairs of layers; rerun it with "
              "--cosine-layers", file=sys.stderr)
    elif missing:
        print(f"note: {missing} module rows have no M_mean/M_max/M_min (null); rerun with --elementwise to compute them", file=sys.stderr)
    return 0


def cmd_import(a) -> int:
    from layergrad.errors import ConfigError
    from layergrad.inputs.models import ModelError, load_tokenizer
    from layergrad.store.paper import import_reference

    if a.max_length < 1:
        raise ConfigError(f"--max-length must be an integer >= 1, got {a.max_length}")
    try:
        tok = None if a.tokenizer.strip().lower() == "none" else load_tokenizer(a.tokenizer)
    except ModelError as e:
        raise ModelError(f"--tokenizer {a.tokenizer}: {e}. Name the tokenizer of the model the file was computed with "
                         "(--tokenizer NAME_OR_FOLDER), or --tokenizer none to import without response lengths") from None
    n = import_reference(a.file, a.to, group=a.group, tokenizer=tok, tokenizer_name=a.tokenizer, prompt_mode=a.prompt_mode,
                         max_length=a.max_length)
    counted = f"; response lengths counted with the {a.tokenizer!r} tokenizer ({a.prompt_mode} prompts)" if tok else \
        "; no response lengths (--tokenizer none): the analysis cannot control for length"
    print(f"imported {n} examples into {a.to}{counted}")
    return 0
