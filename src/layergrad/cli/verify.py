"""``layergrad verify DIR...``: check every committed part of run directories against its checksums."""
from __future__ import annotations

import argparse

EXAMPLES = """examples:
  layergrad verify runs/cot
  layergrad verify runs/x-0 runs/x-1

Every committed part is checked: its Parquet footers, the page checksums of its examples file
and the SHA-256 of its modules and cosine files recorded at commit. A part that fails is left
out by every reader; `layergrad run` with the same options and --out moves it to
parts/unreadable/ and computes its examples again.
exit status: 0 when every part is whole, 1 when some are not, 2 on an error (not a run directory).
"""


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help="check a run directory's parts against their checksums",
                       description="Check that every committed part of a run directory is whole and unchanged since it was written.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories (the --out of `layergrad run`)")
    p.set_defaults(func=cmd_verify)


def cmd_verify(a) -> int:
    from layergrad.store.run import verify

    bad = 0
    for d in a.dirs:
        report = verify(d)
        for tag, problem in report.damaged:
            print(f"{d}: part {tag}: {problem}")
        bad += len(report.damaged)
        legacy = f"; {report.unchecked} written before checksums (footers checked only)" if report.unchecked else ""
        print(f"{d}: {report.whole} of {report.parts} parts whole{legacy}"
              + (f"; rerun `layergrad run` with the same options and --out {d} to recompute the damaged ones" if report.damaged else ""))
    return 1 if bad else 0
