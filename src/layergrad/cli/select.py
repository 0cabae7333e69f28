"""``layergrad select`` and ``layergrad scores``: act on a run's scores. Heavy imports in the handlers."""
from __future__ import annotations

import argparse
from pathlib import Path

from layergrad.cli.outputs import add_force, refuse_existing

METRIC_HELP = """\
METRIC: ifd | ifd_ppl | loss | loss_no_prompt | n_response_tokens | n_prompt_tokens | n_tokens | response_chars
        | loss_with_prompt | reward | instag | difficulty (a score directory of `layergrad score`)
        | record:FIELD, a numeric field of the data's own records (record:reward, record:ifd_gpt2, record:diff)
        | SPECTRAL[:ROLES[:LAYERS]], the per-example mean of a spectral metric over the matching modules
  SPECTRAL  nuclear, spectral, frobenius, min_sigma, top1_share, effective_rank, stable_rank
  ROLES     all (default), attn, mlp, or roles such as q,k,v,o / gate,up,down
  LAYERS    mean (default; = all), early, middle, late (thirds of the depth), 3, 0-9, 0-4,20-29
"""

SELECT_EPILOG = METRIC_HELP + """
examples:
  # the 20% of examples with the highest IFD (NaN and IFD > 1 dropped first: Cherry_LLM's filter)
  layergrad select runs/gsm8k --by ifd --ratio 0.2 --out picked/high_ifd.json
  # the 20% with the lowest IFD, and the 100 with the smallest late-layer MLP nuclear norm
  layergrad select runs/gsm8k --by ifd --bottom 20% --out picked/low_ifd.json
  layergrad select runs/gsm8k --by nuclear:mlp:late --bottom 100 --out picked/flat.jsonl

The selected records are written exactly as read (JSONL lines byte for byte), in input order
(--order score: best first), in the format of --out's suffix (.json, .jsonl, .parquet).
OUT_STEM.scores.csv beside --out (or --scores-csv) holds every example's scores, rank and selection;
an output file that exists already is refused unless --force.
Ties are broken by input order: the earlier record wins.
"""

SCORES_EPILOG = """examples:
  layergrad scores runs/gsm8k --out gsm8k_scored.json
  layergrad scores runs/gsm8k --out scored.jsonl --metric nuclear:attn:late --prefix lg_

Writes every example of the run (all statuses but invalid records), in input order, with one
field per score added to its record (null where a score is undefined). Default scores: loss,
n_response_tokens, response_chars, ifd, ifd_ppl, loss_no_prompt (runs with --ifd) and each stored
spectral metric averaged over all layers for attn, mlp and all (METRIC names, e.g.
effective_rank:attn:mean); for a score directory of `layergrad score`, its scores (ifd, ifd_ppl,
loss_with_prompt, loss_no_prompt, reward, instag, difficulty). The records' own numbers
(record:FIELD) are in the --csv table only: the records hold them already.
--csv FILE also writes the scores table (as `select` does).
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "select",
        help="write the top/bottom examples of a run by a score (IFD, loss, a spectral metric) in the input's format",
        description="Rank the examples of a run directory by METRIC and write the selected records in the input's own "
        "format, ready for training, plus scores.csv of every example.",
        epilog=SELECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", help="run directory of `layergrad run`, or score directory of `layergrad score`")
    p.add_argument("--by", required=True, metavar="METRIC", help="the score to rank by (see below)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--top", metavar="K|P%", help="the K (or P percent) eligible examples with the highest score")
    how.add_argument("--bottom", metavar="K|P%", help="the K (or P percent) eligible examples with the lowest score")
    how.add_argument("--ratio", metavar="R", help="the top fraction R (0 < R <= 1) of the eligible examples")
    p.add_argument("--out", required=True, type=Path, help="output file: .json, .jsonl or .parquet")
    p.add_argument("--no-ifd-filter", action="store_true", help="for ifd/ifd_ppl: keep values > 1 (default: dropped, as Cherry_LLM does; 1 itself is always kept)")
    p.add_argument("--order", choices=["input", "score"], default="input", help="order of the written records (default input)")
    p.add_argument("--scores-csv", type=Path, help="where the scores table goes (default: OUT_STEM.scores.csv beside --out)")
    p.add_argument("--data", nargs="+", help="the run's data files, if not where its manifest says")
    add_force(p)
    p.set_defaults(func=cmd_select)

    p = subparsers.add_parser(
        "scores",
        help="merge a run's scores back into a copy of its input data, one field per score",
        description="Write the run's examples with their scores (IFD, loss, spectral metrics) added to each record, keyed by id.",
        epilog=SCORES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", help="run directory of `layergrad run`")
    p.add_argument("--out", required=True, type=Path, help="output file: .json, .jsonl or .parquet")
    p.add_argument("--metric", dest="metrics", action="append", metavar="METRIC", help="an extra score (repeatable)")
    p.add_argument("--prefix", default="", help="prefix of the added field names (default none)")
    p.add_argument("--csv", type=Path, help="also write the scores table (CSV) here")
    p.add_argument("--data", nargs="+", help="the run's data files, if not where its manifest says")
    add_force(p)
    p.set_defaults(func=cmd_scores)


def cmd_select(a) -> int:
    from layergrad.inputs.data import write_records
    from layergrad.analysis.selection import parse_amount, parse_metric, run_examples, score_table, select
    from layergrad.store import load_results

    csv = a.scores_csv or a.out.with_name(f"{a.out.stem}.scores.csv")  # named after its output: selects never share it
    refuse_existing([a.out, csv], a.force)
    metric = parse_metric(a.by)
    direction = "top" if a.top is not None else "bottom" if a.bottom is not None else "ratio"
    amount = parse_amount(direction, a.top or a.bottom or a.ratio)
    results = load_results(a.dir)
    table = score_table(results, None)
    if metric.name not in table.columns:
        table = score_table(results, [*_names(table), metric.name])
    sel = select(table, metric, amount, ifd_filter=not a.no_ifd_filter)
    examples = run_examples(results, a.data)
    chosen = set(sel.ids)
    if a.order == "score":
        picked = [examples[i] for i in sel.ids]
    else:
        picked = [examples[i] for i in table["id"] if i in chosen]
    out = write_records(picked, a.out)
    rank = {i: r + 1 for r, i in enumerate(sel.ranked)}
    table.insert(len(table.columns), "rank", table["id"].map(rank).astype("Int64"))
    table.insert(len(table.columns), "selected", table["id"].isin(chosen))
    _write_csv(table, csv)
    for line in sel.summary(table.set_index("id")[metric.name]):
        print(line)
    print(f"wrote {len(picked)} records to {out} and {len(table)} rows of scores to {csv} "
          f"(rank = position among the eligible by {metric.name}, {'highest' if sel.amount.direction == 'top' else 'lowest'} first)")
    return 0


def cmd_scores(a) -> int:
    from layergrad.inputs.data import write_records
    from layergrad.analysis.selection import merge_scores, run_examples, score_table
    from layergrad.store import load_results

    refuse_existing([a.out, a.csv], a.force)
    results = load_results(a.dir)
    table = score_table(results, None)
    if a.metrics:
        table = score_table(results, [*_names(table), *a.metrics])
    examples = run_examples(results, a.data)
    ids = [i for i in table["id"] if i in examples]  # invalid records have no example to write
    columns = [c for c in _names(table) if not c.startswith("record:")]  # the records hold those already
    merged = merge_scores([examples[i] for i in ids], table, columns, a.prefix)
    out = write_records(merged, a.out)
    if a.csv:
        _write_csv(table, a.csv)
    print(f"wrote {len(merged)} records to {out} with {len(columns)} score fields: {', '.join(a.prefix + c for c in columns)}")
    if a.csv:
        print(f"wrote the scores table to {a.csv}")
    return 0


def _write_csv(table, path) -> None:
    from layergrad.atomic import atomic_write

    with atomic_write(path, "w", encoding="utf-8", fsync=False) as fh:  # never half a table
        table.to_csv(fh, index=False)


def _names(table) -> list[str]:
    from layergrad.analysis.selection import ID_COLUMNS

    return [c for c in table.columns if c not in ID_COLUMNS and c != "ifd_reason"]
