"""Metrics against training step: the checkpoints of one training run, or a run recorded during training.

A :class:`StepSeries` is one training run seen at several steps: ``groups[j]`` holds the ok examples
measured at ``steps[j]`` (a :class:`~layergrad.analysis.groups.Group`, arrays ``(n, R, L)``). Two sources:

- checkpoints: one ``layergrad run`` directory per saved checkpoint (:func:`load_checkpoints`); the step
  of each is given (``STEP=DIR``, ``NAME@STEP=DIR``), else read from the manifest's model path
  (``.../checkpoint-N``), else from the examples' ``step`` column when it holds one value;
- a run recorded by :class:`~layergrad.integrations.LayerGradCallback` (:func:`recorded_series`): its
  examples carry a ``step`` column; one series per value of their ``group`` column (``train``, ``probe``).

Per step, role and segment (thirds of the depth by ``np.array_split``, and ``all``), the statistic of
:func:`step_table` is: per example the mean over the segment's layers of the metric (NaN layers
left out), then the mean over the examples with a finite value, with a 95% percentile bootstrap
interval over examples. :func:`layer_step_table` gives the per-layer means (the heat map's cells).

Checkpoints of different architectures grouped as one training run are refused
(:class:`IncompatibleCheckpoints`): their manifests must agree in ``model_type``, ``n_layers`` and
``module_names``.
"""
from __future__ import annotations

import dataclasses
import glob
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from layergrad.analysis import bootstrap
from layergrad.analysis.groups import AnalysisError, Group, IncompatibleGroups, group_from_results
from layergrad.store.run import load_results

STEP_IN_PATH = re.compile(r"checkpoint[-_](\d+)")
SEGMENTS = ("early", "middle", "late", "all")
ARCHITECTURE_KEYS = ("model_type", "n_layers", "module_names")
STEP_COLUMNS = ["run", "step", "role", "segment", "first_layer", "last_layer", "metric", "mean", "ci_low", "ci_high", "n"]
LAYER_STEP_COLUMNS = ["run", "step", "role", "layer", "metric", "mean", "n"]


class IncompatibleCheckpoints(IncompatibleGroups):
    """Checkpoints grouped as one training run whose architectures differ."""


@dataclass
class StepSeries:
    run: str  # the training run's label
    source: str  # "checkpoints" | "recorded"
    steps: list[int]  # ascending
    groups: list[Group]  # one per step
    paths: list[Path]

    @property
    def n_layers(self) -> int:
        return self.groups[0].n_layers


@dataclass(frozen=True)
class CheckpointSpec:
    """One ``--checkpoints`` item: ``[NAME=]PATH``, ``STEP=PATH`` or ``NAME@STEP=PATH`` (PATH may be a glob)."""

    path: str
    name: str | None = None
    step: int | None = None


def parse_checkpoint(text: str) -> CheckpointSpec:
    """``"runs/ckpt-*"``, ``"100=runs/a"``, ``"cot@100=runs/a"``, ``"cot=runs/cot/ckpt-*"``. A left side of
    digits only is a step."""
    if "=" not in text:
        return CheckpointSpec(text.strip())
    left, path = (s.strip() for s in text.split("=", 1))
    if not left or not path:
        raise AnalysisError(f"--checkpoints {text!r}: expected [NAME@][STEP]=DIR or DIR")
    if left.isdigit():
        return CheckpointSpec(path, step=int(left))
    m = re.fullmatch(r"(.+)@(\d+)", left)
    if m:
        return CheckpointSpec(path, name=m.group(1).strip(), step=int(m.group(2)))
    if "@" in left:
        raise AnalysisError(f"--checkpoints {text!r}: the step after '@' must be a whole number (NAME@STEP=DIR)")
    return CheckpointSpec(path, name=left)


def expand(specs) -> list[CheckpointSpec]:
    """Globs expanded (sorted); a pattern that matches nothing, or a step given to several folders, is refused."""
    out = []
    for s in specs:
        s = parse_checkpoint(s) if isinstance(s, str) else s
        paths = sorted(glob.glob(s.path)) if glob.has_magic(s.path) else [s.path]
        paths = [p for p in paths if Path(p).is_dir()] if glob.has_magic(s.path) else paths
        if not paths:
            raise AnalysisError(f"--checkpoints {s.path!r}: the pattern matches no folder")
        if s.step is not None and len(paths) > 1:
            raise AnalysisError(f"--checkpoints {s.path!r}: step {s.step} given for {len(paths)} folders; give one folder per step")
        out += [dataclasses.replace(s, path=p) for p in paths]
    return out


def infer_step(results, given: int | None = None) -> int:
    """The training step of a checkpoint's run: ``given``, else ``checkpoint-N`` in the manifest's model
    path, else the examples' ``step`` column when it holds one value."""
    if given is not None:
        return int(given)
    m = results.manifest
    for key in ("model_path", "model"):
        found = STEP_IN_PATH.findall(str(m.get(key) or ""))
        if found:
            return int(found[-1])
    ex = results.examples
    steps = sorted(set(pd.to_numeric(ex["step"], errors="coerce").dropna().astype(int))) if "step" in ex else []
    if len(steps) == 1:
        return steps[0]
    why = f"its examples hold steps {steps}" if steps else "its examples have no step column"
    raise AnalysisError(f"{results.path}: cannot tell the training step: the manifest's model path "
                        f"{m.get('model_path') or m.get('model')!r} has no 'checkpoint-N' and {why}; "
                        f"give it as STEP={results.path} (or NAME@STEP={results.path})")


def architecture_problems(a: tuple[str, dict], b: tuple[str, dict]) -> list[str]:
    """What differs between two manifests in :data:`ARCHITECTURE_KEYS` (``(label, manifest)`` each)."""
    (la, ma), (lb, mb) = a, b
    problems = []
    for key in ARCHITECTURE_KEYS[:2]:
        if ma.get(key) != mb.get(key):
            problems.append(f"{key} {ma.get(key)!r} in {la} vs {mb.get(key)!r} in {lb}")
    na, nb = list(ma.get("module_names") or []), list(mb.get("module_names") or [])
    if na != nb:
        only_a, only_b = [x for x in na if x not in nb], [x for x in nb if x not in na]
        problems.append(f"module_names differ: {len(only_a)} only in {la}{_eg(only_a)}, {len(only_b)} only in {lb}{_eg(only_b)}"
                        if only_a or only_b else f"module_names in a different order in {la} and {lb}")
    return problems


def require_same_architecture(run: str, items: list[tuple[str, dict]]) -> None:
    msgs = [f"  {p}" for other in items[1:] for p in architecture_problems(items[0], other)]
    if msgs:
        raise IncompatibleCheckpoints(
            f"refusing to group checkpoints of different architectures as one training run {run!r}:\n" + "\n".join(msgs)
            + "\nCheckpoints of one run share model_type, n_layers and module_names; measure them with the same "
              "--modules, or give different runs different names (NAME@STEP=DIR)")


def load_checkpoints(specs) -> list[StepSeries]:
    """One :class:`StepSeries` per checkpoint name (default ``checkpoints``), its steps ascending."""
    by_name: dict[str, list[tuple[int, object]]] = {}
    for s in expand(specs):
        res = load_results(s.path)
        by_name.setdefault(s.name or "checkpoints", []).append((infer_step(res, s.step), res))
    out = []
    for name, items in by_name.items():
        items.sort(key=lambda x: x[0])
        steps = [st for st, _ in items]
        dup = sorted({st for st in steps if steps.count(st) > 1})
        if dup:
            where = "; ".join(f"step {d}: " + ", ".join(str(r.path) for st, r in items if st == d) for d in dup)
            raise AnalysisError(f"checkpoints of {name!r} repeat a step ({where}); give each folder its own step (STEP=DIR)")
        require_same_architecture(name, [(f"{r.path} (step {st})", r.manifest) for st, r in items])
        groups = [group_from_results(f"{name}@{st}", r) for st, r in items]
        out.append(StepSeries(name, "checkpoints", steps, groups, [r.path for _, r in items]))
    return out


def recorded_steps(results) -> list[int]:
    """Distinct steps of a run's examples (empty when it has no ``step`` column)."""
    ex = results.examples
    if "step" not in ex:
        return []
    return sorted(set(pd.to_numeric(ex["step"], errors="coerce").dropna().astype(int)))


def recorded_series(results, label: str | None = None) -> list[StepSeries]:
    """A run recorded during training, one series per value of its examples' ``group`` column."""
    ex = results.examples
    base = label or Path(results.path).resolve().name
    names = [str(v) for v in dict.fromkeys(ex["group"].dropna())] if "group" in ex else []
    out = []
    for name in names or [None]:
        part = ex if name is None else ex[ex["group"] == name]
        run = base if name is None or len(names) == 1 else f"{base} / {name}"
        steps, groups = [], []
        for st in recorded_steps(dataclasses.replace(results, examples=part)):
            sub = dataclasses.replace(results, examples=part[pd.to_numeric(part["step"], errors="coerce") == st])
            if (sub.examples["status"] == "ok").any():
                steps.append(st)
                groups.append(group_from_results(f"{run}@{st}", sub))
        if groups:
            out.append(StepSeries(run, "recorded", steps, groups, [Path(results.path)] * len(steps)))
    if not out:
        raise AnalysisError(f"{results.path}: no ok example carries a step; not a run recorded during training")
    return out


def segment_layers(n_layers: int) -> dict[str, np.ndarray]:
    """Layer indices of each segment: thirds of the depth (``np.array_split``) and ``all``."""
    parts = np.array_split(np.arange(n_layers), 3)
    return {**{k: p for k, p in zip(SEGMENTS[:3], parts) if len(p)}, "all": np.arange(n_layers)}


def example_segment_means(g: Group, metric: str, role: str, layers: np.ndarray) -> np.ndarray:
    """``(n,)`` per example: the mean of ``metric`` over ``layers`` (NaN layers left out; NaN if none)."""
    v = g.values[metric][:, g.series.index(role)][:, layers]  # (n, |layers|)
    fin = np.isfinite(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(fin, v, 0.0).sum(axis=1) / fin.sum(axis=1)


def step_table(series: list[StepSeries], metrics, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """:data:`STEP_COLUMNS`: per run, step, role, segment and metric the mean over examples (module docstring)."""
    rows = []
    for s in series:
        segs = segment_layers(s.n_layers)
        for st, g in zip(s.steps, s.groups):
            counts = bootstrap.resample_counts(g.n, n_boot, bootstrap.group_rng(seed, g.label, "steps"))
            for metric in metrics:
                if not g.available(metric):
                    continue
                for role in g.series:
                    for seg, idx in segs.items():
                        x = example_segment_means(g, metric, role, idx)
                        mean, n = bootstrap.means(x)
                        lo, hi = bootstrap.percentile_interval(bootstrap.resampled_means(x, counts), n)
                        rows.append((s.run, st, role, seg, int(idx[0]), int(idx[-1]), metric, float(mean), float(lo), float(hi), int(n)))
    return pd.DataFrame(rows, columns=STEP_COLUMNS)


def layer_step_table(series: list[StepSeries], metrics) -> pd.DataFrame:
    """:data:`LAYER_STEP_COLUMNS`: per run, step, role, layer and metric the mean over examples."""
    rows = []
    for s in series:
        for st, g in zip(s.steps, s.groups):
            for metric in metrics:
                if not g.available(metric):
                    continue
                for r, role in enumerate(g.series):
                    mean, n = bootstrap.means(g.values[metric][:, r, :])  # (L,), (L,)
                    rows += [(s.run, st, role, l, metric, float(mean[l]), int(n[l])) for l in range(g.n_layers)]
    return pd.DataFrame(rows, columns=LAYER_STEP_COLUMNS)


def _eg(names: list[str], k: int = 3) -> str:
    if not names:
        return ""
    return " (e.g. " + ", ".join(names[:k]) + (f", ... (+{len(names) - k})" if len(names) > k else "") + ")"
