"""One group of examples as dense arrays: the input of every analysis.

A group is one run directory under a label (``--run "LABEL=DIR"``), or one value of the
examples' ``group`` column of a run (``--run DIR``, :func:`load_groups`). Its per-module metrics
become arrays ``values[metric]`` of shape ``(n, R, L)``:

- ``n``: examples with status ``ok``, in run order (``ids``);
- ``R``: series, one per module role in model order (``q, k, v, o, gate, up, down``). A role
  that occurs more than once in one layer (role ``unknown``, experts) is split into one series
  per module, named ``role:relative.path`` so that nothing is silently averaged;
- ``L``: the model's depth (manifest ``n_layers``), layers ``0..L-1``.

Entries are NaN where an example has no finite value (NaN in the store, or no row). Modules
outside the layer stack (``layer == -1``, e.g. ``lm_head``) take no part in per-layer analyses.
Validation lives here too: :func:`require_comparable` refuses groups whose depth or module set
differ, naming the groups and what differs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from layergrad.errors import LayergradError
from layergrad.store.run import Results, load_results
from layergrad.store.schema import METRICS


COSINE_KINDS = ("next_layer", "q_o", "k_v")  # display order of cosine kinds (schema.COSINE)

#: Metrics derived from the stored ones, as the paper's code defines its attributes:
#: ``s_ratio = S_max / S_sum = spectral / nuclear`` (the top-1 share, recomputed from the stored norms, so it
#: exists for imported runs too) and ``s_sum_per_loss = S_sum / loss = nuclear / loss`` (the example's loss).
DERIVED_METRICS = ("s_ratio", "s_sum_per_loss")
ANALYSIS_METRICS = tuple(METRICS) + DERIVED_METRICS


class AnalysisError(LayergradError, ValueError):
    """Input the analysis cannot use, with a message saying what and why."""


class IncompatibleGroups(AnalysisError):
    """Groups that cannot be compared layer by layer (different depth or module set)."""


@dataclass
class Group:
    label: str
    manifest: dict
    n_layers: int
    series: list[str]  # R series names (roles), model order
    modules: frozenset[str]  # module paths measured inside the layer stack
    ids: np.ndarray  # (n,) ok example ids, run order
    values: dict[str, np.ndarray]  # metric -> (n, R, L)
    lengths: np.ndarray  # (n,) n_response_tokens (float, NaN if unknown)
    status: pd.DataFrame  # not-ok examples: status, reason, count
    cosine: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)  # kind -> (series, (n, R_k, L))
    keys: dict[str, np.ndarray] = field(default_factory=dict)  # pairing keys per example (compare.pair_examples)
    notes: list[str] = field(default_factory=list)  # data issues a reader must know about

    @property
    def n(self) -> int:
        return len(self.ids)

    def available(self, metric: str) -> bool:
        """Whether the run stores ``metric`` at all (imported runs lack e.g. effective_rank)."""
        v = self.values.get(metric)
        return v is not None and bool(np.isfinite(v).any())

    def describe(self) -> dict:
        """Provenance for labels: model, data, prompt mode, number of examples."""
        m = self.manifest
        data = m.get("data") or []
        if isinstance(data, str):
            data = [data]
        model = str(m.get("model", "?"))
        short = Path(model).name or model
        resolved = Path(str(m.get("model_path") or "")).name  # where e.g. "default" was found
        if resolved and resolved.lower() != short.lower():
            short = f"{short} ({resolved})"
        return {
            "group": self.label,
            "model": model,
            "model_short": short,
            "prompt_mode": str(m.get("prompt_mode", "?")),
            "dtype": str(m.get("dtype", "?")),
            "data": ", ".join(Path(str(d)).name for d in data) or "?",
            "n_layers": self.n_layers,
            "n_ok": self.n,
            "n_not_ok": int(self.status["count"].sum()) if len(self.status) else 0,
        }


def load_group(label: str, path: str | Path) -> Group:
    """Read a run directory (see :func:`layergrad.store.load_results`) as one :class:`Group`."""
    return load_groups(path, label)[0]


def load_groups(path: str | Path, label: str | None = None) -> list[Group]:
    """Groups of a run directory.

    With a ``label``, the whole run is one group (a note says so if its examples carry several
    ``group`` values). Without one, the run is split by the examples' ``group`` column, one group
    per value in order of appearance, labelled by the value; a run with no group values is one
    group labelled by the directory name.
    """
    results = load_results(path)
    names = [str(v) for v in dict.fromkeys(results.examples["group"].dropna())] if "group" in results.examples else []
    if label is not None:
        g = group_from_results(label, results)
        if len(names) > 1:
            g.notes.append(
                f"group {label!r}: run {path} holds examples of {len(names)} groups ({', '.join(names)}), reported together "
                "under this label; pass the directory without 'LABEL=' to report each group separately"
            )
        return [g]
    if len(names) <= 1:
        return [group_from_results(names[0] if names else (Path(path).resolve().name or str(path)), results)]
    return [group_from_results(n, results, only=n) for n in names]


def group_from_results(label: str, results: Results, only: str | None = None) -> Group:
    """A :class:`Group` of ``results``; ``only``: keep the examples whose ``group`` column equals it."""
    notes: list[str] = []
    ex = results.examples
    if only is not None:
        ex = ex[ex["group"] == only]
    ok = ex[ex["status"] == "ok"]
    status = _status_counts(ex)
    if len(ok) == 0:
        counts = "; ".join(f"{r.status} ({r.reason}): {r.count}" for r in status.itertuples()) or "no examples stored"
        raise AnalysisError(f"group {label!r} ({results.path}) has no examples with status ok ({counts}); nothing to analyse")
    if len(status):
        notes.append(f"group {label!r}: {int(status['count'].sum())} of {len(ex)} examples are not ok and are left out (see status.csv)")
    ids = ok["id"].to_numpy()
    row = {e: i for i, e in enumerate(ids)}

    mods = results.modules
    mods = mods[mods["id"].isin(row)]
    outside = sorted(mods.loc[mods["layer"] < 0, "module"].unique())
    if outside:
        notes.append(f"group {label!r}: modules outside the layer stack are not in per-layer analyses: {', '.join(outside)}")
    mods = mods[mods["layer"] >= 0]
    n_layers = _depth(label, results.manifest, mods, notes)

    key = _series_keys(mods[["module", "layer", "role"]].drop_duplicates("module"))
    series = list(dict.fromkeys(key[m] for m in mods["module"].drop_duplicates()))
    r_of = {s: j for j, s in enumerate(series)}
    i = mods["id"].map(row).to_numpy()
    r = mods["module"].map(key).map(r_of).to_numpy()
    lay = mods["layer"].to_numpy(int)
    values = {}
    for metric in METRICS:
        arr = np.full((len(ids), len(series), n_layers), np.nan)
        if metric in mods:
            arr[i, r, lay] = pd.to_numeric(mods[metric], errors="coerce").to_numpy(float)
        values[metric] = arr

    lengths = pd.to_numeric(ok.get("n_response_tokens", pd.Series(np.nan, index=ok.index)), errors="coerce").to_numpy(float)
    loss = pd.to_numeric(ok.get("loss", pd.Series(np.nan, index=ok.index)), errors="coerce").to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        values["s_ratio"] = np.where(values["nuclear"] > 0, values["spectral"] / values["nuclear"], np.nan)
        values["s_sum_per_loss"] = np.where(loss[:, None, None] > 0, values["nuclear"] / loss[:, None, None], np.nan)
    if len(ids) == 1:
        notes.append(f"group {label!r} has a single ok example: its confidence intervals are undefined (reported as NaN)")
    g = Group(label, results.manifest, n_layers, series, frozenset(mods["module"].unique()), ids, values, lengths, status, notes=notes)
    g.cosine = _cosine_arrays(g, results.cosine, row)
    g.keys = _pair_keys(ok)
    unavailable = [m for m in METRICS if not g.available(m)]  # derived metrics follow their sources: not listed
    if unavailable and len(mods):
        notes.append(f"group {label!r} stores no values of {', '.join(unavailable)} (prompt mode {g.describe()['prompt_mode']}); those metrics are left out for it")
    return g


def _pair_keys(ok: pd.DataFrame) -> dict[str, np.ndarray]:
    """Candidate keys to pair examples across groups (see ``compare.pair_examples``)."""
    from layergrad.inputs.synthetic import pair_key

    keys = {"id": np.array([pair_key(str(i)) for i in ok["id"]], dtype=object)}
    for col in ("pair_key", "instruction"):
        if col in ok:
            keys[col] = ok[col].to_numpy(dtype=object)
    return keys


def _status_counts(ex: pd.DataFrame) -> pd.DataFrame:
    bad = ex[ex["status"] != "ok"]
    if len(bad) == 0:
        return pd.DataFrame({"status": pd.Series(dtype=str), "reason": pd.Series(dtype=str), "count": pd.Series(dtype=int)})
    from layergrad.run.faults import reason_kind

    # group by a stable label of the reason (one row per kind, not per record or token count)
    kinds = [reason_kind(s, r) for s, r in zip(bad["status"], bad["reason"])]
    bad = bad.assign(reason=kinds)
    return bad.groupby(["status", "reason"], sort=True).size().rename("count").reset_index()


def _depth(label: str, manifest: dict, mods: pd.DataFrame, notes: list[str]) -> int:
    seen = int(mods["layer"].max()) + 1 if len(mods) else 0
    if manifest.get("n_layers") is None:
        notes.append(f"group {label!r}: manifest has no n_layers; depth inferred as {seen} from the largest layer index")
        return seen
    n_layers = int(manifest["n_layers"])
    if seen > n_layers:
        raise AnalysisError(f"group {label!r}: manifest says n_layers={n_layers} but rows have layer index {seen - 1}; the run directory is inconsistent")
    return n_layers


def _series_keys(mt: pd.DataFrame) -> dict[str, str]:
    """module path -> series name: its role, or ``role:relative.path`` when the role repeats in a layer."""
    mt = mt.assign(role=mt["role"].fillna("unknown"))
    dup = mt.duplicated(["layer", "role"], keep=False)
    repeated = set(mt.loc[dup, "role"])
    out = {}
    for m, layer, role in mt[["module", "layer", "role"]].itertuples(index=False):
        out[m] = f"{role}:{_relative(m, layer)}" if role in repeated else role
    return out


def _relative(module: str, layer: int) -> str:
    """Path below the layer: ``model.layers.3.mlp.experts.0.up`` -> ``mlp.experts.0.up``."""
    m = re.search(rf"(^|\.){layer}\.", module)
    return module[m.end():] if m else module


def _cosine_arrays(g: Group, cos: pd.DataFrame, row: dict) -> dict:
    out = {}
    if cos is None or len(cos) == 0:
        return out
    cos = cos[cos["id"].isin(row) & (cos["layer"] >= 0) & (cos["layer"] < g.n_layers)]
    kinds = list(dict.fromkeys(cos["kind"]))
    kinds.sort(key=lambda k: (COSINE_KINDS.index(k) if k in COSINE_KINDS else len(COSINE_KINDS), k))
    for kind in kinds:
        c = cos[cos["kind"] == kind]
        mt = c[["module_a", "layer", "role"]].drop_duplicates("module_a").rename(columns={"module_a": "module"})
        key = _series_keys(mt)
        seen = list(dict.fromkeys(key[m] for m in c["module_a"]))
        order = {s: j for j, s in enumerate(g.series)}  # model order, like the metrics
        series = sorted(seen, key=lambda s: (order.get(s, len(order)), seen.index(s)))
        r_of = {s: j for j, s in enumerate(series)}
        arr = np.full((g.n, len(series), g.n_layers), np.nan)
        arr[c["id"].map(row).to_numpy(), c["module_a"].map(key).map(r_of).to_numpy(), c["layer"].to_numpy(int)] = c["cosine"].to_numpy(float)
        out[str(kind)] = (series, arr)
    return out


def comparability_problems(a: Group, b: Group) -> list[str]:
    """What stops a layer-by-layer comparison of ``a`` and ``b`` (empty when they are comparable)."""
    problems = []
    if a.n_layers != b.n_layers:
        problems.append(f"depth differs: {a.label!r} has {a.n_layers} layers, {b.label!r} has {b.n_layers}")
    if a.modules != b.modules:
        only_a, only_b = sorted(a.modules - b.modules), sorted(b.modules - a.modules)
        problems.append(
            "module sets differ: "
            f"{len(only_a)} only in {a.label!r}{_eg(only_a)}, {len(only_b)} only in {b.label!r}{_eg(only_b)}"
        )
    elif a.series != b.series:
        problems.append(f"roles differ: {a.label!r} has {a.series}, {b.label!r} has {b.series}")
    return problems


def require_comparable(groups: list[Group]) -> None:
    """Raise :class:`IncompatibleGroups` naming every pair of groups that cannot be compared."""
    msgs = []
    for j in range(len(groups)):
        for k in range(j + 1, len(groups)):
            for p in comparability_problems(groups[j], groups[k]):
                msgs.append(f"  {groups[j].label!r} vs {groups[k].label!r}: {p}")
    if msgs:
        raise IncompatibleGroups(
            "refusing to compare groups measured on different layer structures:\n"
            + "\n".join(msgs)
            + "\nCompare runs of the same architecture with the same --modules selection, or report them separately."
        )


def _eg(names: list[str], k: int = 3) -> str:
    if not names:
        return ""
    more = f", ... (+{len(names) - k})" if len(names) > k else ""
    return " (e.g. " + ", ".join(names[:k]) + more + ")"


def exclusions(group: Group, metrics: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Cells (metric, role, layer) where some ok examples have no finite value and were excluded.

    A cell where the series is not measured at all (no example has a value) is structural,
    not an exclusion, and is not listed. Columns: group, metric, role, layer, n_excluded, n_total.
    """
    rows = []
    for metric in metrics:
        if not group.available(metric):
            continue
        fin = np.isfinite(group.values[metric])  # (n, R, L)
        n_fin = fin.sum(axis=0)
        for r, l in zip(*np.nonzero((n_fin > 0) & (n_fin < group.n))):
            rows.append((group.label, metric, group.series[r], int(l), int(group.n - n_fin[r, l]), group.n))
    return pd.DataFrame(rows, columns=["group", "metric", "role", "layer", "n_excluded", "n_total"])


def status_table(groups: list[Group]) -> pd.DataFrame:
    """Per group: how many examples were not ok, by status and reason. Columns: group, status, reason, count."""
    frames = [g.status.assign(group=g.label) for g in groups if len(g.status)]
    cols = ["group", "status", "reason", "count"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)
