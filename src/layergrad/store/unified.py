"""The follow-up paper's JSON-lines format (``get_grad_vector_initial_try.py`` of Gradient_Unified).

One line per example: ``instruction``, ``output``, ``loss``; per weight parameter name a dict of
``M_mean``, ``M_max``, ``M_min``, ``frobenius_norm`` and ``S_list`` (every one of the ``min(out, in)``
singular values, descending); then

* ``cosine_sim[proj] = {"layer_indices": [l, ...], "matrix": L x L}`` for ``proj`` in ``q_proj``,
  ``k_proj``, ``v_proj``, ``o_proj`` (the last part of the module path): the cosine of the flattened
  weight gradients of every pair of layers of that projection;
* ``cosine_sim_qkvo["l"] = {"q_proj_x_o_proj": c, "k_proj_x_v_proj": c}``: q with o, k with v, in layer l.

The script's cosine convention, kept in these files (and only here): ``dot / (norm_a * norm_b + 1e-9)``
in float32, so its diagonal is ``n^2 / (n^2 + 1e-9)``, slightly below 1 for small gradients. The store
holds exact cosines (``<G_a, G_b> / (|G_a| |G_b|)``, schema.COSINE); :func:`script_cosine` and
:func:`exact_cosine` convert with the module's Frobenius norm. The store's cosine kinds: ``next_layer``
(layers one apart), ``gap2``, ``gap3``, ... (``run --cosine-layers``), ``q_o``, ``k_v``.
"""
from __future__ import annotations

import json
import math

import torch

from layergrad.inputs.targets import layer_of, role_of
from layergrad.spectra.metrics import spectrum_stats, undefined_reason
from layergrad.store.rows import cosine_row, module_row

KEYS = ("M_mean", "M_max", "M_min", "frobenius_norm", "S_list")
PROJ_ROLES = ("q", "k", "v", "o")  # the script's cosine_sim keys: q_proj, k_proj, v_proj, o_proj
QKVO_PAIRS = (("q_o", "q", "o"), ("k_v", "k", "v"))  # store kind, role a, role b: key "<a>_x_<b>"
EPS = 1e-9  # the script's guard in dot / (norm_a * norm_b + 1e-9)


def script_cosine(cos: float, n_a: float, n_b: float) -> float:
    """The script's value ``dot / (n_a n_b + 1e-9)`` from an exact cosine and the two Frobenius norms."""
    prod = n_a * n_b
    return cos * prod / (prod + EPS)


def exact_cosine(value: float, n_a: float, n_b: float) -> float:
    """Inverse of :func:`script_cosine`: the exact cosine from the script's value (NaN for a zero gradient)."""
    prod = n_a * n_b
    return value * (prod + EPS) / prod if prod > 0 else float("nan")


def gap_kind(d: int) -> str:
    """The store's cosine kind of two layers ``d >= 1`` apart."""
    return "next_layer" if d == 1 else f"gap{d}"


def _proj(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


# -- export ---------------------------------------------------------------------------------------
def unified_record(ex, mods, cos) -> tuple[dict, int]:
    """One example's line (``ex`` a row of the examples table, ``mods``/``cos`` its module and cosine
    rows as DataFrames); and how many cosine entries were missing (null: run without --cosine-layers)."""
    rec = {"instruction": ex["instruction"], "output": ex["output"], "loss": float(ex["loss"])}
    norm, by_layer_proj = {}, {}
    for _, m in mods.iterrows():
        s = [float(v) for v in m["spectrum"]]
        full = min(int(m["out_features"]), int(m["in_features"])) if _num(m["out_features"]) is not None else len(s)
        rec[m["param"]] = {"M_mean": _num(m["m_mean"]), "M_max": _num(m["m_max"]), "M_min": _num(m["m_min"]),
                           "frobenius_norm": float(m["frobenius"]), "S_list": s + [0.0] * (full - len(s))}
        norm[m["module"]] = float(m["frobenius"])
        if m["role"] in PROJ_ROLES and m["layer"] >= 0:
            by_layer_proj[(int(m["layer"]), m["role"])] = m["module"]
    pair = {(c["module_a"], c["module_b"]): float(c["cosine"]) for _, c in cos.iterrows()} if len(cos) else {}

    def value(a: str, b: str) -> float | None:
        if a == b:
            return script_cosine(1.0, norm[a], norm[a]) if norm[a] > 0 else 0.0
        c = pair.get((a, b), pair.get((b, a)))
        return None if c is None or math.isnan(c) else script_cosine(c, norm[a], norm[b])

    missing = 0
    sims = {}
    for role in PROJ_ROLES:
        layers = sorted(layer for layer, r in by_layer_proj if r == role)
        if not layers:
            continue
        names = [by_layer_proj[(layer, role)] for layer in layers]
        matrix = [[value(a, b) for b in names] for a in names]
        missing += sum(v is None for row in matrix for v in row)
        sims[_proj(names[0])] = {"layer_indices": layers, "matrix": matrix}
    qkvo = {}
    for layer in sorted({layer for layer, _ in by_layer_proj}):
        info = {}
        for _, a, b in QKVO_PAIRS:
            ma, mb = by_layer_proj.get((layer, a)), by_layer_proj.get((layer, b))
            if ma is not None and mb is not None:
                v = value(ma, mb)
                if v is not None:  # the script has no entry where it cannot compute one (shapes differ)
                    info[f"{_proj(ma)}_x_{_proj(mb)}"] = v
        qkvo[str(layer)] = info
    rec["cosine_sim"] = sims
    rec["cosine_sim_qkvo"] = qkvo
    return rec, missing


# -- import ---------------------------------------------------------------------------------------
def is_unified(rec: dict) -> bool:
    """Whether a parsed line is in this format (it has ``S_list`` or the cosine tables)."""
    return "cosine_sim" in rec or any(isinstance(v, dict) and "S_list" in v for v in rec.values())


def problems_of(rec: dict) -> list[str]:
    """The fields of a line that do not fit the format (names quoted as the file spells them)."""
    bad = []
    for name, v in rec.items():
        if name in ("instruction", "output", "loss"):
            continue
        if name in ("cosine_sim", "cosine_sim_qkvo"):
            if not isinstance(v, dict):
                bad.append(name)
            continue
        s = v.get("S_list") if isinstance(v, dict) else None
        if (not isinstance(s, list) or not s or any(not isinstance(x, (int, float)) for x in s)
                or not isinstance(v.get("frobenius_norm"), (int, float))):
            bad.append(name)
    return bad


def rows_of(rec: dict, ex_id: str) -> tuple[list[dict], list[dict]]:
    """Module rows and cosine rows (exact cosines) of one parsed line."""
    modules, by_layer_proj, norm, role_of_module = [], {}, {}, {}
    for name, v in rec.items():
        if name in ("instruction", "output", "loss", "cosine_sim", "cosine_sim_qkvo"):
            continue
        module = name[: -len(".weight")] if name.endswith(".weight") else name
        s = torch.tensor([v["S_list"]], dtype=torch.float64)  # (1, min(out, in))
        st = spectrum_stats(s, s.shape[-1])
        stats = {k: float(getattr(st, k)[0]) for k in ("nuclear", "spectral", "frobenius", "min_sigma", "top1_share",
                                                      "effective_rank", "stable_rank")}
        stats["frobenius"] = float(v["frobenius_norm"])  # the file's own (float32 dense) norm
        layer, role = layer_of(module), role_of(module)
        modules.append(module_row(
            id=ex_id, module=module, param=name, layer=layer, role=role, **stats,
            spectrum=[float(x) for x in v["S_list"]], m_mean=_num(v.get("M_mean")), m_max=_num(v.get("M_max")),
            m_min=_num(v.get("M_min")), method="imported", reason=undefined_reason(stats["nuclear"]),
        ))
        norm[module] = float(v["frobenius_norm"])
        role_of_module[module] = role
        if layer >= 0:
            by_layer_proj[(layer, _proj(module))] = (module, role)
    cos = []

    def add(kind: str, a: str, b: str, value) -> None:
        if isinstance(value, (int, float)):
            cos.append(cosine_row(id=ex_id, kind=kind, role=role_of_module[a], layer=layer_of(a), module_a=a, module_b=b,
                                  cosine=exact_cosine(float(value), norm[a], norm[b])))

    for proj, table in (rec.get("cosine_sim") or {}).items():
        layers, matrix = table.get("layer_indices", []), table.get("matrix", [])
        for i, la in enumerate(layers):
            for j, lb in enumerate(layers):
                a, b = by_layer_proj.get((la, proj)), by_layer_proj.get((lb, proj))
                if lb > la and a and b:
                    add(gap_kind(lb - la), a[0], b[0], matrix[i][j])
    roles = {(layer, r): m for (layer, _), (m, r) in by_layer_proj.items()}
    for layer, info in (rec.get("cosine_sim_qkvo") or {}).items():
        for kind, ra, rb in QKVO_PAIRS:
            a, b = roles.get((int(layer), ra)), roles.get((int(layer), rb))
            for key, value in info.items():
                if a and b and key == f"{_proj(a)}_x_{_proj(b)}":
                    add(kind, a, b, value)
    return modules, cos


def to_lines(results) -> tuple[list[str], int]:
    """Lines for every ok example of ``results`` (store.Results), in example order; and the cosine
    entries that were missing (null)."""
    lines, missing = [], 0
    mods = results.modules.groupby("id", sort=False)
    cos = results.cosine.groupby("id", sort=False) if len(results.cosine) else None
    for _, ex in results.ok.iterrows():
        m = mods.get_group(ex["id"]) if ex["id"] in mods.groups else results.modules.iloc[:0]
        c = cos.get_group(ex["id"]) if cos is not None and ex["id"] in cos.groups else results.cosine.iloc[:0]
        rec, miss = unified_record(ex, m, c)
        missing += miss
        lines.append(json.dumps(rec))
    return lines, missing
