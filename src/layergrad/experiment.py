"""``layergrad experiment CONFIG.toml``: a whole study — models x groups — then one report per
comparison and an overview page linking them. Every run is resumable, so rerunning the same
command continues where it stopped.

Config (TOML)::

    name = "fast_slow"
    out = "runs/fast_slow"            # relative to the current directory
    data_root = "../../shared/data"   # relative to this file; $LAYERGRAD_DATA overrides
    [run]                             # RunConfig options for every run (see `layergrad run --help`)
    limit = 8
    modules = "all"
    [[models]]
    name = "SmolLM2-135M-Instruct"
    model = "default"
    [[groups]]
    label = "gsm8k / Detailed CoT"
    data = "cot_500/gsm8k_train_with_cot_gpt4o.json"   # or "builtin:detailed" (synthetic data)
    [[comparisons]]
    title = "gsm8k: fast vs slow thinking"
    groups = ["gsm8k / None CoT", "gsm8k / Detailed CoT"]

A study's design as a matrix instead of listing groups one by one (``[matrix]``; may be combined
with [[groups]] and [[comparisons]], which come first)::

    [matrix]
    data = "{correctness}/{task}_train_{style}.json"      # file name pattern, relative to data_root
    label = "{task} / {style} / {correctness}"            # group label; empty ' / ' parts are dropped
    task = ["gsm8k", "aqua"]                              # an axis as a list: label = value
    style = { "None CoT" = "no_cot", "Detailed CoT" = "with_cot_gpt4o" }   # or a table: label = value
    correctness = { "" = "cot_500", "irrelevant" = "cot_500_wrong_answer_shuffle" }
    [[matrix.comparisons]]
    title = "{task}: fast vs slow thinking"
    each = ["task"]                 # one comparison per task ...
    fix = { correctness = "" }      # ... of the groups with these axis labels; other axes vary
    order = ["style", "correctness"]   # optional: outermost axis first for this comparison's groups

Length control by truncation (docs/length-control.md): a group may say ``truncate_to = "<another
group's label>"`` (each example's response cut to the length of its partner in that group's run for
the same model, which is then run first) or ``truncate_response = K``::

    [[groups]]
    label = "Detailed CoT, cut to None CoT length"
    data = "builtin:detailed"
    truncate_to = "None CoT"

In a ``[matrix]``, ``[[matrix.truncated]]`` adds such a group for every cell of one axis label (the
other axes the same), and a comparison's ``fix`` may list several labels of an axis (in that order);
a truncated group enters only the comparisons whose ``fix`` names its label::

    [[matrix.truncated]]
    axis = "style"
    from = "Detailed CoT"                          # the data of this label's cells ...
    to = "None CoT"                                # ... cut to the lengths of this label's cells
    label = "Detailed CoT, cut to None CoT length" # the new groups' label on that axis
    fix = { correctness = "" }                     # optional: only these cells
    [[matrix.comparisons]]
    title = "{task}: fast vs slow thinking at equal length"
    each = ["task"]
    fix = { correctness = "", style = ["None CoT", "Detailed CoT, cut to None CoT length"] }

Options of every report of the study go in ``[report]``: ``segments`` ("thirds" | "paper"),
``correction`` ("maxt" | "by" | "bh"), ``pairing`` ("auto" | "none" | "pair_key" | "instruction" | "id"), ``n_perm``, ``n_boot``, ``seed``,
``metrics``, ``normalise`` ("none" | "mean" | "zscore": cross-model reports).

With several ``[[models]]``, each group measured on two or more models also gets a cross-model
report (``reports/cross-model/<group>/``: the models compared on relative depth,
:mod:`layergrad.report.crossmodel`), beside the per-model reports.

A quality study (``[quality]``): the matrix axis that names the quality metric and the one that holds
its high and low splits; the other axes (a pool) and each model give separate rows. After the reports,
``reports/quality/index.html`` (:mod:`layergrad.report.quality`): per model, pool and metric, high vs
low on each property, and the agreement matrix (metrics x properties)::

    [quality]
    metric = "metric"        # axis naming the quality metric (default "metric")
    level = "level"          # axis with the two splits (default "level")
    high = "high"            # its labels (defaults "high", "low")
    low = "low"
    properties = ["nuclear", "effective_rank"]   # default
    scores = ["reward", "instag"]  # records' own score fields to correlate with the properties
                                   # (default: the metric labels that are fields of the records)
    reasoning = ["gsm8k / R1 traces"]  # groups (e.g. reasoning traces) compared with every split

[[groups]] written out take part through ``axes = { metric = "reward", level = "high", pool = "her" }``.

Groups are every combination of the axes, the first axis outermost, in file order; a comparison
takes its groups in that order unless it gives its own ``order``. Comparisons are listed by their
``each`` values (all comparisons of the first task, then of the second, ...).
"""
from __future__ import annotations

import html
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .config import RunConfig
from .errors import ConfigError, LayergradError
from .vocab import did_you_mean


class ExperimentError(LayergradError, ValueError):
    pass


#: The keys of an experiment file, and of one of its [[groups]].
TOP_KEYS = ("name", "out", "data_root", "run", "models", "groups", "comparisons", "builtin", "matrix", "report", "quality")
MATRIX_KEYS = ("data", "label", "comparisons", "truncated")
MATRIX_COMPARISON_KEYS = ("title", "each", "fix", "order")
MATRIX_TRUNCATED_KEYS = ("axis", "from", "to", "label", "fix")
QUALITY_KEYS = ("metric", "level", "high", "low", "properties", "scores", "reasoning")
GROUP_KEYS = ("label", "data", "run", "axes", "truncate_to", "truncate_response")  # axes: {axis: label}, set by [matrix] (read by [quality])


@dataclass
class Job:
    model_name: str
    label: str
    cfg: RunConfig


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            conf = tomllib.load(fh)
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such experiment file") from None
    except tomllib.TOMLDecodeError as e:
        raise ExperimentError(f"{path}: not valid TOML: {e}") from None
    conf["_base"] = path.resolve().parent
    conf["_path"] = str(path)
    problems: list[str] = []
    if "matrix" in conf:
        try:
            groups, comparisons = expand_matrix(conf["matrix"], path)
        except ExperimentError as e:
            problems.append(str(e).removeprefix(f"{path}: "))
        else:
            conf["groups"] = list(conf.get("groups", [])) + groups
            conf["comparisons"] = list(conf.get("comparisons", [])) + comparisons
    problems += _problems(conf)
    if not problems:
        try:
            conf["groups"] = _partners_first(conf["groups"], path)
        except ExperimentError as e:
            problems.append(str(e).removeprefix(f"{path}: "))
    if problems:  # every problem of the file at once, before anything runs
        raise ExperimentError(f"{path}: {len(problems)} problem(s) in the experiment file:\n"
                              + "\n".join(f"  - {p}" for p in problems)
                              + "\n(see `layergrad experiment --help` for the format)")
    return conf


def _problems(conf: dict) -> list[str]:
    """Every problem of a loaded experiment file: its keys, models, groups, comparisons, the run options of
    every model x group (as :func:`plan` builds them) and [report]."""
    problems = [f"unknown key {k!r}{did_you_mean(k, TOP_KEYS, template=' (did you mean {!r}?)')}" for k in conf
                if k not in TOP_KEYS and not k.startswith("_")]
    problems += [f"missing '{key}'" for key in ("name", "models", "groups") if key not in conf]
    models = [m for m in conf.get("models", []) if isinstance(m, dict) and isinstance(m.get("model"), str)]
    for i, m in enumerate(conf.get("models", [])):
        if not isinstance(m, dict) or not isinstance(m.get("model"), str):
            problems.append(f"models[{i}] needs a string 'model' (a folder, a .gguf file or 'default')")
    q = conf.get("quality")
    if q is not None:
        if not isinstance(q, dict):
            problems.append("'quality' must be a table ([quality])")
        else:
            problems += [f"[quality]: unknown key {k!r}{did_you_mean(k, QUALITY_KEYS, template=' (did you mean {!r}?)')}" for k in q
                         if k not in QUALITY_KEYS]
            from .analysis.groups import ANALYSIS_METRICS

            problems += [f"[quality] properties: unknown metric {p!r}{did_you_mean(str(p), ANALYSIS_METRICS, template=' (did you mean {!r}?)')}"
                         for p in q.get("properties", []) if p not in ANALYSIS_METRICS]
    groups = []
    for i, g in enumerate(conf.get("groups", [])):
        bad = [k for k in (g if isinstance(g, dict) else {}) if k not in GROUP_KEYS]
        problems += [f"groups[{i}]: unknown key {k!r}{did_you_mean(k, GROUP_KEYS, template=' (did you mean {!r}?)')}" for k in bad]
        missing = [k for k in ("label", "data") if not isinstance(g, dict) or not isinstance(g.get(k), str)]
        problems += [f"groups[{i}] needs a string '{k}'" for k in missing]
        if not missing:
            groups.append(g)
    labels = [g["label"] for g in groups]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        problems.append(f"group labels must be unique; repeated: {', '.join(sorted(dup))}")
    for i, c in enumerate(conf.get("comparisons", [])):
        unknown = [g for g in c.get("groups", []) if g not in labels]
        if unknown or len(c.get("groups", [])) < 1:
            problems.append(f"comparisons[{i}] ({c.get('title')!r}) names unknown group(s) {unknown}; groups are: {', '.join(labels)}")
    q = conf.get("quality") if isinstance(conf.get("quality"), dict) else {}
    reasoning = q.get("reasoning", [])
    if not isinstance(reasoning, list) or not all(isinstance(r, str) for r in reasoning):
        problems.append(f"[quality] reasoning must be a list of group labels, got {reasoning!r}")
    else:
        problems += [f"[quality] reasoning: {r!r} is no group's label{did_you_mean(r, labels, template=' (did you mean {!r}?)')}; "
                     f"groups are: {', '.join(labels)}" for r in reasoning if r not in labels]
    runs: dict[str, list[str]] = {}  # problem -> the runs it concerns, as plan() reports them
    for m in models:
        for g in groups:
            opts, origins = _run_options(conf, m, g)
            opts.update(data=[g["data"]], group=g["label"], out=".")
            try:
                RunConfig.from_dict(opts, origins=origins)
            except ConfigError as e:
                for problem in e.problems:
                    runs.setdefault(problem, []).append(f"{m.get('name') or m['model']} · {g['label']}")
    n_jobs = len(models) * len(groups)
    problems += [p if len(who) == n_jobs else f"{p} (runs: {', '.join(who)})" for p, who in runs.items()]
    return problems + _report_problems(conf)


def _run_options(conf: dict, m: dict, g: dict) -> tuple[dict, dict]:
    """The run options of model ``m`` x group ``g`` ([run], then the model's, then the group's [groups.run]), and
    where each came from; without data, group and out."""
    mname = m.get("name") or m["model"]
    opts = dict(conf.get("run", {}))
    origins = {k: "[run]" for k in opts}
    opts.update({k: v for k, v in m.items() if k not in ("name",)})
    origins.update({k: f"[[models]] {mname!r}" for k in m if k != "name"})
    opts.update(g.get("run", {}))
    origins.update({k: f"[groups.run] of {g['label']!r}" for k in g.get("run", {})})
    if "truncate_response" in g:
        opts["truncate_response"] = g["truncate_response"]
        origins["truncate_response"] = f"group {g['label']!r}"
    return opts, origins


def _partners_first(groups: list[dict], path) -> list[dict]:
    """``groups`` with every ``truncate_to`` group before the groups cut to its lengths (else in file order).

    An unknown label is refused with a did-you-mean and the list of labels; so are a group cut to its own
    lengths, a cycle, and ``truncate_to`` in a ``run`` table (a run directory there; a group names a label).
    """
    labels = [g["label"] for g in groups]
    problems = []
    for g in groups:
        if "truncate_to" in (g.get("run") or {}):
            problems.append(f"group {g['label']!r}: truncate_to goes in the group itself (truncate_to = \"<a group's label>\"), "
                            "not in its run table")
        to = g.get("truncate_to")
        if to is None:
            continue
        if not isinstance(to, str) or to not in labels:
            hint = did_you_mean(str(to), labels, template=" (did you mean {!r}?)")
            problems.append(f"group {g['label']!r}: truncate_to = {to!r} is no group's label{hint}; groups are: {', '.join(labels)}")
        elif to == g["label"]:
            problems.append(f"group {g['label']!r}: truncate_to names the group itself; name the group whose lengths to cut to")
    if problems:
        raise ExperimentError(f"{path}: " + "; ".join(problems))
    by_label = {g["label"]: g for g in groups}
    ordered, placing = [], []

    def place(g):
        if g in ordered:
            return
        if g in placing:
            raise ExperimentError(f"{path}: truncate_to forms a cycle: {' -> '.join(x['label'] for x in placing + [g])}")
        placing.append(g)
        if g.get("truncate_to") is not None:
            place(by_label[g["truncate_to"]])
        placing.pop()
        ordered.append(g)

    for g in groups:
        place(g)
    return ordered


def _axes(matrix: dict, path) -> dict[str, list[tuple[str, str]]]:
    axes = {}
    for name, v in matrix.items():
        if name in MATRIX_KEYS:
            continue
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            axes[name] = [(x, x) for x in v]
        elif isinstance(v, dict) and all(isinstance(x, str) for x in v.values()):
            axes[name] = list(v.items())
        else:
            raise ExperimentError(f"{path}: [matrix] {name!r} must be an axis: a list of strings or a table of label = value strings")
        if not axes[name]:
            raise ExperimentError(f"{path}: [matrix] axis {name!r} is empty")
    if not axes:
        raise ExperimentError(f"{path}: [matrix] has no axes (e.g. task = [\"gsm8k\"])")
    return axes


def _fill(pattern: str, values: dict, path, what: str) -> str:
    try:
        return pattern.format(**values)
    except (KeyError, IndexError, ValueError) as e:
        raise ExperimentError(f"{path}: [matrix] {what} {pattern!r}: unknown or bad placeholder {e}; axes are: {', '.join(values)}") from None


def expand_matrix(matrix: dict, path="experiment") -> tuple[list[dict], list[dict]]:
    """[matrix] -> ([[groups]], [[comparisons]]) as if written out (module docstring)."""
    import itertools

    if not isinstance(matrix.get("data"), str):
        raise ExperimentError(f"{path}: [matrix] needs a string 'data' (a file name pattern such as \"{{task}}_{{style}}.json\")")
    axes = _axes(matrix, path)
    names = list(axes)
    label_pattern = matrix.get("label", " / ".join("{" + n + "}" for n in names))
    groups, cells = [], []
    for combo in itertools.product(*(axes[n] for n in names)):
        labels = {n: lab for n, (lab, _) in zip(names, combo)}
        values = {n: val for n, (_, val) in zip(names, combo)}
        label = " / ".join(part for part in _fill(label_pattern, labels, path, "label").split(" / ") if part.strip())
        groups.append({"label": label, "data": _fill(matrix["data"], values, path, "data"), "axes": labels})
        cells.append(labels)
    derived = _truncated_groups(matrix, axes, groups, cells, label_pattern, path)  # axis -> its new labels
    comparisons = []
    for i, c in enumerate(matrix.get("comparisons", [])):
        bad = [k for k in c if k not in MATRIX_COMPARISON_KEYS]
        if bad or not isinstance(c.get("title"), str):
            raise ExperimentError(f"{path}: matrix.comparisons[{i}] takes a string 'title', 'each' (axes) and 'fix' (axis = label); "
                                  f"unknown: {', '.join(bad) or '-'}")
        each = list(c.get("each", []))
        fix = {n: [v] if isinstance(v, str) else list(v) for n, v in dict(c.get("fix", {})).items()}
        unknown = [n for n in each + list(fix) if n not in axes]
        if unknown:
            raise ExperimentError(f"{path}: matrix.comparisons[{i}] ({c['title']!r}) names unknown axes {unknown}; axes are: {', '.join(names)}")
        for n, labs in fix.items():
            known = [x for x, _ in axes[n]] + derived.get(n, [])
            for lab in labs:
                if lab not in known:
                    raise ExperimentError(f"{path}: matrix.comparisons[{i}]: {lab!r} is not a label of axis {n!r} ({', '.join(repr(x) for x in known)})")
        order = list(c.get("order", []))
        if any(n not in axes for n in order):
            raise ExperimentError(f"{path}: matrix.comparisons[{i}] ({c['title']!r}): 'order' names unknown axes; axes are: {', '.join(names)}")
        order += [n for n in names if n not in order]
        # rank of a label on an axis: its place in the comparison's fix list, else in the axis (truncated labels last)
        rank = {n: {lab: j for j, lab in enumerate(fix[n] if n in fix else [x for x, _ in axes[n]] + derived.get(n, []))}
                for n in names}
        for combo in itertools.product(*([lab for lab, _ in axes[n]] for n in each)):
            want = {**fix, **{n: [v] for n, v in zip(each, combo)}}
            # an axis the comparison does not fix takes its own labels only: a truncated group is chosen by name
            chosen = [(g["label"], cell) for g, cell in zip(groups, cells)
                      if all(cell[n] in want[n] if n in want else cell[n] not in derived.get(n, ()) for n in names)]
            chosen.sort(key=lambda gc: tuple(rank[n][gc[1][n]] for n in order))
            key = tuple(rank[n][want[n][0]] if n in each else -1 for n in names)
            comparisons.append((key, i, {"title": _fill(c["title"], dict(zip(each, combo)), path, "title"), "groups": [g for g, _ in chosen]}))
    comparisons.sort(key=lambda x: x[:2])
    return groups, [c for _, _, c in comparisons]


def _truncated_groups(matrix: dict, axes: dict, groups: list[dict], cells: list[dict], label_pattern: str, path) -> dict:
    """Append the ``[[matrix.truncated]]`` groups (module docstring) to ``groups``/``cells``; axis -> new labels."""
    derived: dict[str, list[str]] = {}
    for i, t in enumerate(matrix.get("truncated", [])):
        where = f"{path}: matrix.truncated[{i}]"
        bad = [k for k in t if k not in MATRIX_TRUNCATED_KEYS] if isinstance(t, dict) else ["(not a table)"]
        if bad or not all(isinstance(t.get(k), str) for k in ("axis", "from", "to", "label")):
            raise ExperimentError(f"{where} takes strings 'axis', 'from', 'to', 'label' and an optional 'fix' (axis = label); "
                                  f"unknown: {', '.join(bad) or '-'}")
        axis = t["axis"]
        if axis not in axes:
            raise ExperimentError(f"{where}: unknown axis {axis!r}; axes are: {', '.join(axes)}")
        own = [x for x, _ in axes[axis]]
        for k in ("from", "to"):
            if t[k] not in own:
                raise ExperimentError(f"{where}: {k} = {t[k]!r} is not a label of axis {axis!r} ({', '.join(map(repr, own))})")
        if t["label"] in own + derived.get(axis, []):
            raise ExperimentError(f"{where}: label {t['label']!r} is already a label of axis {axis!r}; choose a new one")
        fix = dict(t.get("fix", {}))
        for n, lab in fix.items():
            if n not in axes or lab not in [x for x, _ in axes[n]]:
                raise ExperimentError(f"{where}: fix {n} = {lab!r} is not an axis label")
        label_of = {tuple(sorted(cell.items())): g["label"] for g, cell in zip(groups, cells)}
        for g, cell in list(zip(groups, cells)):
            if cell[axis] != t["from"] or any(cell[n] != lab for n, lab in fix.items()) or cell[axis] in derived.get(axis, ()):
                continue
            new = {**cell, axis: t["label"]}
            partner = label_of[tuple(sorted({**cell, axis: t["to"]}.items()))]
            label = " / ".join(part for part in _fill(label_pattern, new, path, "label").split(" / ") if part.strip())
            groups.append({"label": label, "data": g["data"], "truncate_to": partner, "axes": new})
            cells.append(new)
        derived.setdefault(axis, []).append(t["label"])
    return derived


def data_root(conf: dict) -> Path:
    env = os.environ.get("LAYERGRAD_DATA")
    if env:
        return Path(env)
    return (conf["_base"] / conf.get("data_root", ".")).resolve()


def plan(conf: dict, out: Path | None = None) -> tuple[list[Job], list[str]]:
    """The runs to do, and a note for every group whose data is absent (skipped, not fatal)."""
    from layergrad.inputs.synthetic import write_dataset

    out = Path(out or conf.get("out", f"runs/{conf['name']}"))
    root = data_root(conf)
    jobs, notes = [], []
    problems: dict[str, list[str]] = {}  # problem -> the runs it concerns
    builtin = None
    planned: set[tuple[str, str]] = set()  # (model name, group label) of the jobs so far
    for m in conf["models"]:
        mname = m.get("name") or m["model"]
        for g in conf["groups"]:
            spec = g["data"]
            if spec.startswith("builtin:"):
                if builtin is None:
                    b = conf.get("builtin", {})
                    builtin = write_dataset(out / "data", n=int(b.get("n", 12)), seed=int(b.get("seed", 0)))
                style = spec.split(":", 1)[1]
                if style not in builtin:
                    raise ExperimentError(f"group {g['label']!r}: unknown built-in style {style!r}; choose one of {', '.join(builtin)}")
                path = builtin[style]
            else:
                path = root / spec
                if not path.exists():
                    notes.append(f"skipped group {g['label']!r}: {path} not found (set data_root or $LAYERGRAD_DATA)")
                    continue
            opts, origins = _run_options(conf, m, g)
            if g.get("truncate_to") is not None:  # the partner group's run for this model (load_config put it first)
                if (mname, g["truncate_to"]) not in planned:
                    notes.append(f"skipped group {g['label']!r}: it is cut to the lengths of group {g['truncate_to']!r}, "
                                 "which is not run")
                    continue
                opts["truncate_to"] = str(out / "runs" / slug(mname) / slug(g["truncate_to"]))
            opts.update(data=[str(path)], group=g["label"], out=str(out / "runs" / slug(mname) / slug(g["label"])))
            planned.add((mname, g["label"]))
            try:
                jobs.append(Job(mname, g["label"], RunConfig.from_dict(opts, origins=origins)))
            except ConfigError as e:  # every problem of every run, each once
                for problem in e.problems:
                    problems.setdefault(problem, []).append(f"{mname} · {g['label']}")
    if problems:
        n_jobs = len(conf["models"]) * len(conf["groups"])
        lines = [p if len(who) == n_jobs else f"{p} (runs: {', '.join(who)})" for p, who in problems.items()]
        raise ExperimentError(f"{conf.get('_path', 'experiment')}: {len(lines)} problem(s) in the run options:\n"
                              + "\n".join(f"  - {line}" for line in lines))
    return jobs, notes


def run_experiment(config_path: str | Path, out: str | Path | None = None, *, reports: bool = True, log=print) -> Path:
    from layergrad.run import distributed
    from layergrad.run import engine
    from layergrad.inputs.models import load_model

    conf = load_config(config_path)
    out = Path(out or conf.get("out", f"runs/{conf['name']}"))
    jobs, notes = plan(conf, out)
    for n in notes:
        log(n)
    if not jobs:
        raise ExperimentError(f"{config_path}: nothing to run (no group's data was found)")
    # Under torchrun every rank runs every job on its own shard (engine.run); reports are rank 0's.
    world = distributed.detect()
    main_rank = world is None or world.rank == 0
    loaded_cache: dict[str, object] = {}
    for k, job in enumerate(jobs, 1):
        key = job.cfg.model
        if key not in loaded_cache:
            loaded_cache.clear()  # one model in memory at a time
            device = engine.resolve_device(job.cfg.device)
            if world is not None:
                device = distributed.local_device(world, device, job.cfg.device_map)
            loaded_cache[key] = load_model(job.cfg.model, dtype=job.cfg.dtype, device=device, device_map=job.cfg.device_map, trust_remote_code=job.cfg.trust_remote_code,
                                       progress=job.cfg.progress)
        if main_rank:
            log(f"[{k}/{len(jobs)}] {job.model_name} · {job.label}")
        # two studies over overlapping runs: the second waits for the first to finish each shared run (its lock)
        s = engine.run(job.cfg, loaded=loaded_cache[key], wait_for_lock=True)
        if main_rank:
            log(f"    {s.out}: {s.status_counts}, {s.computed} computed now ({s.seconds:.0f} s)")
            for line in s.notes:  # what --truncate-* did (and how many examples had no usable partner)
                log(f"    {line}")
    if world is not None:
        distributed.barrier()
    if not reports or not main_rank:
        return out
    from .report import build_report

    by_label = {}
    for job in jobs:
        by_label.setdefault(job.model_name, {})[job.label] = job.cfg.out
    links = []
    comparisons = conf.get("comparisons") or [{"title": "all groups", "groups": [g["label"] for g in conf["groups"]]}]
    for mname, runs in by_label.items():
        for c in comparisons:
            chosen = [(label, runs[label]) for label in c["groups"] if label in runs]
            if not chosen:
                continue
            rdir = out / "reports" / slug(mname) / slug(c["title"])
            index = build_report(chosen, rdir, **{k: v for k, v in report_options(conf).items() if k != "normalise"})
            log(f"report: {index}")
            links.append((mname, c["title"], index.relative_to(out), len(chosen)))
    links += _cross_model_reports(conf, jobs, out, log)
    if "quality" in conf:
        from .report.quality import study_page

        index = study_page(conf, jobs, out / "reports" / "quality")
        log(f"quality report: {index}")
        links.append(("all models", "quality: do the metrics agree?", index.relative_to(out), len(jobs)))
    overview = out / "index.html"
    overview.write_text(_overview_html(conf["name"], links, notes, out), encoding="utf-8")
    log(f"overview: {overview}")
    return overview


CROSS_MODEL = "all models"  # the overview's model column of a cross-model report


def _cross_model_reports(conf: dict, jobs: list[Job], out: Path, log) -> list[tuple]:
    """One cross-model report per group measured on two or more models (report.crossmodel), its groups
    labelled by model name; returns the overview's links."""
    from .analysis.curves import DEFAULT_METRICS
    from .analysis.groups import load_group
    from .report import crossmodel

    by_group: dict[str, list[Job]] = {}
    for job in jobs:
        by_group.setdefault(job.label, []).append(job)
    opts = report_options(conf)
    links = []
    for label, js in by_group.items():
        if len({j.model_name for j in js}) < 2:
            continue
        groups = [load_group(j.model_name, j.cfg.out) for j in js]
        rdir = out / "reports" / "cross-model" / slug(label)
        index, _, _ = crossmodel.write(groups, rdir, list(opts.get("metrics", DEFAULT_METRICS)), n_boot=opts.get("n_boot", 1000),
                                       seed=opts.get("seed", 0), normalise=opts.get("normalise", "none"))
        log(f"cross-model report: {index}")
        links.append((CROSS_MODEL, f"{label}: across models", index.relative_to(out), len(groups)))
    return links


def report_options(conf: dict) -> dict:
    """``[report]`` options of the experiment file passed to every report (segments, correction, pairing, n_perm, n_boot, seed,
    metrics, normalise)."""
    problems = _report_problems(conf)
    if problems:
        raise ExperimentError(f"{conf.get('_path', 'experiment')}: " + "; ".join(problems))
    opts = dict(conf.get("report", {}))
    if "metrics" in opts:
        opts["metrics"] = tuple(opts["metrics"])
    return opts


_REPORT_KEYS = ("segments", "correction", "pairing", "n_perm", "n_boot", "seed", "metrics", "normalise")


def _report_problems(conf: dict) -> list[str]:
    opts = conf.get("report", {})
    if not isinstance(opts, dict):
        return [f"[report] must be a table of {', '.join(_REPORT_KEYS)}"]
    bad = [k for k in opts if k not in _REPORT_KEYS]
    problems = [f"[report] takes {', '.join(_REPORT_KEYS)}; unknown: "
                + ", ".join(f"{k!r}{did_you_mean(k, _REPORT_KEYS, template=' (did you mean {!r}?)')}" for k in bad)] if bad else []
    if opts.get("normalise", "none") not in ("none", "mean", "zscore"):
        problems.append(f"[report] normalise = {opts['normalise']!r}; choose none, mean or zscore")
    return problems


def _overview_html(name: str, links, notes, out: Path | None = None) -> str:
    """The overview (the report's template, report/html.py): first the verdict table of every comparison of the study
    (read from each report's findings.csv; report/verdicts.py), then each comparison's findings, then the links."""
    import pandas as pd

    from .report import html as page
    from .report import verdicts

    rows = "".join(
        f'<tr><td>{html.escape(m)}</td><td><a href="{html.escape(str(p))}">{html.escape(t)}</a></td><td class="num">{n}</td></tr>'
        for m, t, p, n in links)
    frames, found = [], []
    for m, t, p, n in links:
        f = Path(out or ".") / Path(p).parent / "findings.csv"
        if not f.exists():
            continue
        df = pd.read_csv(f, keep_default_na=True)
        df["pair_by"] = df["pair_by"].fillna("") if "pair_by" in df else ""
        frames.append(df.assign(_model=m, _comparison=t))
        found.append(f'<h3><a href="{html.escape(str(p))}#findings">{html.escape(m)} · {html.escape(t)}</a></h3>'
                     + verdicts.short_findings_html(df, str(Path(p).parent / "findings.csv")))
    table = ""
    if frames:
        every = pd.concat(frames, ignore_index=True)
        table = verdicts.table_html(verdicts.verdict_table(
            every, label=lambda r: f"{r['_model']} · {r['_comparison']}: {r['group_b']} vs {r['group_a']}"))
    reports = page.Section("reports", "Reports", "One report per comparison; every number in a report is in the CSV files beside it.",
                           tables=[page.TableRef("", page.Markup('<table class="data"><thead><tr><th>model</th><th>comparison</th>'
                                                                  f'<th class="num">groups</th></tr></thead><tbody>{rows}</tbody></table>'),
                                                 [], len(links))])
    n_runs = sum(n for _, _, _, n in links)
    return page.render_page(
        kind="overview", title=f"{name}: experiment overview",
        question=f"Study {name!r}: {len(links)} report{'s' if len(links) != 1 else ''} ({n_runs} groups compared); "
                 "every comparison's verdicts first, each report one click away.",
        verdicts=table, findings="".join(found), notes=notes,
        sections=[reports] if links else [page.left_out("reports", "Reports", "no report was written (run with reports)")])


EPILOG = """examples:
  layergrad experiment experiments/demo.toml
  layergrad experiment experiments/fast_slow.toml --out runs/fast_slow
  LAYERGRAD_DATA=/data/cot layergrad experiment experiments/fast_slow.toml --no-reports
  torchrun --nproc_per_node 4 -m layergrad experiment experiments/fast_slow.toml   # every job sharded over 4 ranks
"""


def add_parser(subparsers):
    import argparse

    p = subparsers.add_parser("experiment", help="run a whole study from a TOML file, then its reports",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from layergrad.inputs.data.formats import DESCRIPTION

    p.add_argument("config", help=f"experiment TOML file; a group's data (relative to data_root): {DESCRIPTION}, "
                   "or builtin:STYLE")
    p.add_argument("--out", help="output directory (default: the file's 'out')")
    p.add_argument("--no-reports", action="store_true", help="only the runs")
    p.set_defaults(func=lambda a: (run_experiment(a.config, a.out, reports=not a.no_reports), 0)[1])
    return p
