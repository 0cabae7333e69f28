"""``layergrad merge DIR... [--to OUT]``: combine or check the shards of one run."""
from __future__ import annotations

import argparse

EXAMPLES = """examples:
  # a job array of 4 shards, each into its own directory, then one store:
  layergrad run --data d.json --out runs/x-0 --shard 0/4      # ... --out runs/x-3 --shard 3/4
  layergrad merge runs/x-0 runs/x-1 runs/x-2 runs/x-3 --to runs/x

  # check a directory that torchrun ranks or shard jobs wrote into together:
  layergrad merge runs/x

Refuses directories of different runs (model, prompt mode, modules, data, max length, dtype,
statistics options), naming the key and both values. Missing examples are listed by reading
the data files named in the manifest (run it where those paths resolve).
exit status: 0 when every example of the data is stored, 1 when some are missing
(the merge is still written), 2 on an error such as incompatible directories.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="combine shard directories into one store, or check one (missing, duplicate examples)",
        description="Check that run directories hold shards of one run and combine them into one store.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories (the --out of each shard)")
    p.add_argument("--to", help="write the merged store here (a new directory); without it, only check")
    p.set_defaults(func=cmd_merge)


def cmd_merge(a) -> int:
    from layergrad.store.merge import check, format_report, merge

    report = merge(a.dirs, a.to) if a.to else check(a.dirs)
    print(format_report(report))
    return 1 if report.missing else 0
