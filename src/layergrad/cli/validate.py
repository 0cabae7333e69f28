"""``layergrad validate DATA...``: every problem in data files, without a model. Heavy imports in the handler."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="list every problem in data files",
                       description="Check data files without a model: print every problem (file, record, field, what is "
                       "wrong), one per line. Exit status 0 when there is none, 1 otherwise.",
                       epilog="example:\n  layergrad validate data/*.json", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help="data files: Alpaca .json/.jsonl/.parquet or chat 'messages' records")
    p.set_defaults(func=cmd_validate)


def cmd_validate(a) -> int:
    from layergrad.inputs.data import Fields, validate

    problems = validate(a.data, fields=Fields())
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) in {len(a.data)} file(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(a.data)} file(s), no problems")
    return 0
