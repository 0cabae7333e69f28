"""``layergrad validate DATA...``: every problem in data files, without a model. Heavy imports in the handler."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="list every problem in data files",
                       description="Check data files without a model: print every problem (file, record, field, what is "
                       "wrong), one per line. Exit status 0 when there is none, 1 otherwise.",
                       epilog="example:\n  layergrad validate data/*.json", formatter_class=argparse.RawDescriptionHelpFormatter)
    from layergrad.inputs.data.formats import DESCRIPTION

    p.add_argument("data", nargs="+", help=f"data: {DESCRIPTION}")
    p.add_argument("--split", default=None, help="datasets folders and hub datasets: the split (as layergrad run --split)")
    p.add_argument("--subset", default=None, help="datasets folders and hub datasets: the subset (as layergrad run --subset)")
    p.set_defaults(func=cmd_validate)


def cmd_validate(a) -> int:
    from layergrad.inputs.data import DatasetOptions, Fields, describe_data, validate
    from layergrad.inputs.data.loading import sources_of  # the files a folder stands for

    for line in describe_data(a.data):  # what a folder gives, as `run` says it
        print(line)
    problems = validate(a.data, fields=Fields(), dataset=DatasetOptions(split=a.split, subset=a.subset))
    for p in problems:
        print(p)
    n = len(sources_of(a.data))
    if problems:
        print(f"{len(problems)} problem(s) in {n} file(s)", file=sys.stderr)
        return 1
    print(f"ok: {n} file(s), no problems")
    return 0
