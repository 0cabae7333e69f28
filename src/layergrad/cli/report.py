"""``layergrad report``: the command. Heavy imports happen in the handler, so ``--help`` is instant."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# From the torch-free vocabulary (not the analysis), so that building the parser imports nothing heavy.
from layergrad.vocab import DEFAULT_REPORT_METRICS as _DEFAULT_METRICS
from layergrad.vocab import METRICS as _VOCAB_METRICS

#: The stored metrics and the derived ones of layergrad.analysis.groups.DERIVED_METRICS (the paper's attributes).
_METRICS = tuple(_VOCAB_METRICS) + ("s_ratio", "s_sum_per_loss")

EPILOG = """\
examples:
  # two groups of one study, report in ./report
  layergrad report --run "None CoT=runs/none" --run "Detailed CoT=runs/detailed" --out report

  # only the nuclear norm and effective rank, another seed, fewer permutations (faster)
  layergrad report --run fast=runs/fast --run slow=runs/slow --out report \\
      --metric nuclear --metric effective_rank --seed 1 --n-perm 1999

  # the Scores panel split by effective rank of the attention modules, top and bottom 20%
  layergrad report --run runs/ifd --out report --split-by effective_rank:attn:mean --split-fraction 0.2

  # the paper's early/middle/late layer splits, Benjamini-Hochberg instead of Benjamini-Yekutieli,
  # and the paper's attributes S_ratio = S_max / S_sum and S_sum / loss
  layergrad report --run paper=runs/imported --out report --segments paper --correction bh \
      --metric nuclear --metric s_ratio --metric s_sum_per_loss

  # one run over several data files: without "LABEL=" it is split by the examples' group
  # (--group of `layergrad run`, else the data file's stem), one group per value
  layergrad report --run runs/all --out report

  # the checkpoints of one training run against step (step from '.../checkpoint-N' in the manifest's model path)
  layergrad report --checkpoints 'runs/ckpt-*' --out report
  layergrad report --checkpoints 100=runs/a 200=runs/b --out report            # the steps given
  layergrad report --checkpoints 'cot@100=runs/c1' 'cot@200=runs/c2' 'plain@100=runs/p1' --out report   # two runs

  # a run recorded by LayerGradCallback (its examples carry a step column): the same by-step view
  layergrad report --run runs/train --out report

A run without "LABEL=" and without stored groups is labelled by its directory name; a run with
one group alone gives curves, MAD, length and scores only. The Scores panel (scores*.csv, split_*.csv)
pools the examples of all groups; it shows IFD when the runs were made with `layergrad run --ifd`. Open OUT/index.html in a browser;
the tables are beside it as CSV, Markdown and LaTeX, the figures in OUT/figures as PNG and SVG.
"""


def parse_run(text: str) -> tuple[str | None, Path]:
    """``"LABEL=DIR"`` -> (label, dir), split at the first '='; a bare ``DIR`` -> (None, dir)."""
    if "=" in text:
        label, path = text.split("=", 1)
        if not label.strip() or not path.strip():
            raise argparse.ArgumentTypeError(f"expected LABEL=DIR, got {text!r}")
        return label.strip(), Path(path.strip())
    return None, Path(text)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="figures, tables and an HTML report comparing groups of examples",
        description="Build a static HTML report (with CSV/Markdown/LaTeX tables and PNG/SVG figures) "
        "from one or more layergrad run directories, one group per run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group(required=True)  # groups to compare, or one training run's steps
    which.add_argument("--run", dest="runs", action="append", type=parse_run, default=[], metavar="LABEL=DIR",
                   help="a group: its label and run directory (repeat for each group; groups are compared in this order). "
                   "A bare DIR is split by the examples' group column")
    which.add_argument("--checkpoints", action="extend", nargs="+", default=[], metavar="SPEC",
                   help="checkpoint runs of one training run, reported against step: a folder or a glob (quoted), "
                   "STEP=DIR, NAME@STEP=DIR or NAME=GLOB (several NAMEs: several training runs). Without a step it is "
                   "read from 'checkpoint-N' in the manifest's model path, else from the examples' step column")
    p.add_argument("--out", required=True, type=Path, help="output folder (created; files in it are overwritten)")
    p.add_argument("--metric", dest="metrics", action="append", choices=_METRICS, metavar="METRIC",
                   help=f"metric to report (repeatable; default: {', '.join(_DEFAULT_METRICS)}; choices: {', '.join(_METRICS)})")
    p.add_argument("--seed", type=int, default=0, help="seed of bootstrap and permutations (default 0)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--n-perm", type=int, default=9999, help="permutations per test (default 9999)")
    p.add_argument("--split-by", metavar="METRIC", default=None,
                   help="score of the Scores panel's high vs low split: ifd, ifd_ppl, loss, n_response_tokens or "
                   "SPECTRAL:ROLES:LAYERS such as effective_rank:attn:mean (see `layergrad select --help`; "
                   "default: ifd when the runs have IFD, else loss)")
    p.add_argument("--split-fraction", type=float, default=0.5, metavar="F",
                   help="fraction of the examples in each of the high and low parts, in (0, 0.5] (default 0.5: halves)")
    p.add_argument("--segments", choices=("thirds", "paper"), default="thirds",
                   help="MAD segments: thirds of the depth (default) or the paper's splits (26: [:7] [7:20] [20:]; "
                   "28: [:7] [7:21] [21:]; 32: [:10] [10:20] [20:]; 42: [:12] [12:30] [30:]; other depths: thirds, with a note)")
    p.add_argument("--correction", choices=("maxt", "by", "bh"), default="maxt",
                   help="correction over the (layer, role) cells of each pair of groups and metric: maxt = max-T permutation "
                   "(default; Westfall-Young, family-wise error under any dependence), by = Benjamini-Yekutieli FDR, "
                   "bh = Benjamini-Hochberg FDR")
    p.add_argument("--normalise", choices=("none", "mean", "zscore"), default="none",
                   help="runs of different models: divide each mean curve by its mean over layers (mean) or z-score it "
                        "(zscore), so families of different width compare in shape (default none)")
    p.add_argument("--pairing", choices=("auto", "none", "pair_key", "instruction", "id"), default="auto",
                   help="auto (default): groups whose examples share a pair_key or instruction text are compared as paired "
                   "samples; none: always independent; pair_key, instruction, id: pair on that key only (id: the example ids, "
                   "only when both groups number the same records)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr while the report is built")
    p.set_defaults(func=handler)
    return p


def handler(args: argparse.Namespace) -> int:
    from layergrad.errors import LayergradError
    from layergrad.report.build import make_report

    if args.n_boot < 1 or args.n_perm < 1:
        print("layergrad report: error: --n-boot and --n-perm must be at least 1", file=sys.stderr)
        return 2
    from layergrad.cli.outputs import report_there

    replaced = report_there(args.out)
    if replaced:
        print(f"note: {replaced}", file=sys.stderr)
    try:
        rep = make_report(args.runs, args.out, metrics=tuple(args.metrics or _DEFAULT_METRICS), seed=args.seed,
                          n_boot=args.n_boot, n_perm=args.n_perm, split_by=args.split_by, split_fraction=args.split_fraction,
                          segments=args.segments, correction=args.correction, pairing=args.pairing,
                          normalise=args.normalise, checkpoints=args.checkpoints, progress=not args.no_progress)
    except (LayergradError, FileNotFoundError) as e:  # AnalysisError, a store's ConfigMismatch, ...
        print(f"layergrad report: error: {e}", file=sys.stderr)
        return 2
    for n in rep.notes:
        print(f"note: {n}", file=sys.stderr)
    print(rep.index)
    return 0
