"""``layergrad select`` and ``layergrad scores``: act on a run's scores. Heavy imports in the handlers."""
from __future__ import annotations

import argparse
from pathlib import Path

from layergrad.cli.outputs import add_force, refuse_existing

METRIC_HELP = """\
METRIC: ifd | ifd_ppl | loss | loss_no_prompt | n_response_tokens | n_prompt_tokens | n_tokens | response_chars
        | loss_with_prompt | reward | instag | difficulty (a score directory of `layergrad score`)
        | record:FIELD, a numeric field of the data's own records (record:reward, record:ifd_gpt2, record:diff);
          FIELD alone where it is no run metric, and always when SOURCE is a data file (field:FIELD, an
          earlier spelling, is read as record:FIELD)
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
  # the paper's high/low design on a pool's own scores: the 200 highest and 200 lowest by reward
  layergrad select pool_10k.csv --by reward --split 200 --out picked/
  #   -> picked/pool_10k_reward_highest_200.csv and picked/pool_10k_reward_lowest_200.csv

SOURCE is a run directory or a data file (.json, .jsonl, .parquet, .csv, .tsv). The selected records are
written exactly as read (JSONL lines byte for byte, CSV rows with the same cells), in input order
(--order score: best first), in the format of --out's suffix; an --out without a suffix is a folder, and
the files in it take the input's own format and are named INPUT_METRIC_{highest,lowest,top,bottom}_AMOUNT.
--split K|P% writes both ends: OUT_STEM_high.EXT and OUT_STEM_low.EXT (refused when they would overlap).
OUT_STEM.scores.csv beside --out (or --scores-csv) holds every example's scores, rank and selection;
an output file that exists already is refused unless --force.
Not eligible: examples not ok, and NaN, missing or non-numeric scores (counted in the summary).
Ties are broken by input order: the earlier record wins; a tie across the cut is stated.
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
    p.add_argument("dir", metavar="SOURCE", help="run directory of `layergrad run`, score directory of `layergrad score`, "
                   "or a data file ranked by its own fields")
    p.add_argument("--by", required=True, metavar="METRIC", help="the score to rank by (see below)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--top", metavar="K|P%", help="the K (or P percent) eligible examples with the highest score")
    how.add_argument("--bottom", metavar="K|P%", help="the K (or P percent) eligible examples with the lowest score")
    how.add_argument("--ratio", metavar="R", help="the top fraction R (0 < R <= 1) of the eligible examples")
    how.add_argument("--split", metavar="K|P%", help="both: the K (or P percent) highest and the K lowest, two files")
    p.add_argument("--out", required=True, type=Path, help="output file (.json, .jsonl, .parquet, .csv, .tsv), or a folder "
                   "(no suffix: files in the input's format)")
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


def _scored(a):
    """``(score table, metric, examples by id, input files, notes)`` for SOURCE and --by."""
    import pandas as pd

    from layergrad.analysis import selection as S
    from layergrad.inputs.data import load_examples
    from layergrad.store import RunStore, load_results

    if RunStore(a.dir).manifest() is None:  # a data file (or folder): its records' own fields
        exs, _ = load_examples([str(a.dir)])
        metric = S.field_metric(a.by)
        table, examples, files = S.examples_table(exs), {e.id: e for e in exs}, [str(a.dir)]
        from_records = True
    else:
        results = load_results(a.dir)
        table = S.score_table(results, None)
        files = [str(p) for p in (a.data or results.manifest.get("data") or [])]
        try:
            metric = S.field_metric(a.by) if a.by.startswith(S.LEGACY_RECORD_PREFIX) else S.parse_metric(a.by)
            if metric.column in S.QUALITY_SCORES and metric.column not in results.examples.columns:
                S.metric_values(results, metric)  # raises: not computed here; the records' own field may hold it
        except S.MetricError as e:
            examples = S.run_examples(results, a.data)
            if not any(a.by in ex.record for ex in examples.values()):
                raise S.MetricError(f"{e} (nor is it a field of the records of {', '.join(files)})") from None
            metric = S.field_metric(a.by)
        else:
            examples = None
        # a record field is read from the records, unless `layergrad score` stored it (a score directory)
        from_records = metric.record is not None and metric.column not in results.examples.columns
        if not from_records and metric.name not in table.columns:
            table = S.score_table(results, [*_names(table), metric.name])
        examples = examples if examples is not None else S.run_examples(results, a.data)
    notes = []
    if from_records:
        name = metric.record
        fields = list(dict.fromkeys(k for ex in examples.values() for k in ex.record))
        if name not in fields:
            from layergrad.vocab import did_you_mean

            raise S.MetricError(f"--by {a.by!r}: no record of {', '.join(files)} has a field {name!r}{did_you_mean(name, fields, default=';')} "
                                f"fields: {', '.join(fields)}")
        ok = table["status"] == "ok" if "status" in table else pd.Series(True, index=table.index)
        present = [i for i in table.loc[ok, "id"] if i in examples]  # as the NaN count: ok examples (invalid records have none)
        values, bad = S.field_values([examples[i] for i in present], metric)
        table[metric.name] = table["id"].map(dict(zip(present, values))).astype(float)
        if any(bad.values()):  # what the NaN count of the summary is made of
            notes = ["    of these, " + ", ".join(f"{n} {why}" for why, n in bad.items() if n)]
    return table, metric, examples, files, notes


def _outputs(a, metric, amounts: dict, files: list[str]) -> tuple[dict, Path]:
    """Output path per end (``top``/``bottom``) and the scores CSV's path."""
    ext = Path(files[0]).suffix if files and Path(files[0]).suffix else ".jsonl"
    if a.out.suffix:  # a file: one end, or OUT_STEM_high / OUT_STEM_low
        outs = ({"top": a.out.with_name(f"{a.out.stem}_high{a.out.suffix}"), "bottom": a.out.with_name(f"{a.out.stem}_low{a.out.suffix}")}
                if len(amounts) == 2 else {d: a.out for d in amounts})
        stem = a.out.with_name(a.out.stem)
    else:  # a folder: the input's own format, named like the paper's files
        base = f"{Path(files[0]).stem if files else 'selected'}_{(metric.record or metric.name).replace(':', '-').replace(',', '+')}"
        words = {"top": "highest", "bottom": "lowest"} if len(amounts) == 2 else {"top": "top", "bottom": "bottom"}
        outs = {d: a.out / f"{base}_{words[d]}_{amt.describe().split(' ', 1)[1].replace('%', 'pct')}{ext}" for d, amt in amounts.items()}
        stem = a.out / base
    return outs, a.scores_csv or stem.with_name(f"{stem.name}.scores.csv")  # named after its output: selects never share it


def cmd_select(a) -> int:
    from layergrad.analysis.selection import Amount, MetricError, cut_ties, parse_amount, select
    from layergrad.inputs.data import write_records

    if a.split is not None:
        one = parse_amount("top", a.split)
        amounts = {"top": one, "bottom": Amount("bottom", one.count, one.fraction)}
    else:
        direction = "top" if a.top is not None else "bottom" if a.bottom is not None else "ratio"
        one = parse_amount(direction, a.top or a.bottom or a.ratio)
        amounts = {one.direction: one}
    table, metric, examples, files, notes = _scored(a)
    outs, csv = _outputs(a, metric, amounts, files)
    refuse_existing([*outs.values(), csv], a.force)
    sels = {d: select(table, metric, amt, ifd_filter=not a.no_ifd_filter) for d, amt in amounts.items()}
    if len(sels) == 2 and set(sels["top"].ids) & set(sels["bottom"].ids):
        n = sels["top"].n_eligible
        raise MetricError(f"--split {a.split}: the highest and the lowest {len(sels['top'].ids)} of the {n} eligible examples "
                          f"by {metric.name} would overlap; ask for at most {n // 2} (or {100 * (n // 2) / max(n, 1):.4g}%)")
    if not next(iter(sels.values())).n_eligible:
        first = next(iter(sels.values()))
        why = "; ".join(f"{n} {w}" for w, n in first.dropped.items() if n) + "".join(n.replace("    of these,", "; of these,") for n in notes)
        raise MetricError(f"--by {a.by}: no example of {', '.join(files) or a.dir} has a usable value ({why}); choose a "
                          "numeric score the examples have")
    scores = table.set_index("id")[metric.name]
    ranked = next(iter(sels.values())).ranked if "top" not in sels else sels["top"].ranked
    rank = {i: r + 1 for r, i in enumerate(ranked)}
    table.insert(len(table.columns), "rank", table["id"].map(rank).astype("Int64"))
    chosen = {i: ("high" if d == "top" and len(sels) == 2 else "low" if len(sels) == 2 else "selected") for d, s in sels.items() for i in s.ids}
    table.insert(len(table.columns), "selected", table["id"].map(chosen).fillna("") if len(sels) == 2 else table["id"].isin(chosen))
    written = []
    for k, (d, sel) in enumerate(sels.items()):
        keep = set(sel.ids)
        picked = [examples[i] for i in sel.ids] if a.order == "score" else [examples[i] for i in table["id"] if i in keep]
        written.append((write_records(picked, outs[d]), len(picked)))
        lines = sel.summary(scores)
        if k == 0:  # the NaN count's parts right below it
            at = next((j + 1 for j, line in enumerate(lines) if line.endswith(f"with {metric.name} NaN")), None)
            if at is not None:
                lines[at:at] = notes
        else:  # eligibility said once
            lines = [line for line in lines if not line.startswith(("  not eligible", "  IFD filter"))]
        print("\n".join(lines + [t for t in [cut_ties(sel, scores)] if t]))
    _write_csv(table, csv)
    print("wrote " + " and ".join(f"{n} records to {p}" for p, n in written) + f", and {len(table)} rows of scores to {csv} "
          f"(rank = position among the eligible by {metric.name}, {'lowest' if list(sels) == ['bottom'] else 'highest'} first)")
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
