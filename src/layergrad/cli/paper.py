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
                       epilog="example:\n  layergrad import old_results.jsonl --to runs/old", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="the paper's JSON-lines file")
    p.add_argument("--to", required=True, help="run directory to create")
    p.add_argument("--group", help="group label of the imported examples (default: the file's name without its suffix)")
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
    from layergrad.store.paper import import_reference

    n = import_reference(a.file, a.to, group=a.group)
    print(f"imported {n} examples into {a.to}")
    return 0
