"""The paper's JSON-lines format (``code_gradient/get_gradient_values.py`` of Layer_Gradient).

One line per example: ``instruction``, ``output``, ``loss``, and per weight parameter name
(``model.layers.0.self_attn.q_proj.weight``) a dict of ``M_mean``, ``M_max``, ``M_min``
(entries of the dense gradient), ``frobenius_norm``, ``S_sum``, ``S_max``, ``S_min``
(singular values). Reading and writing it lets users bring results of the paper's code here.

The format stores no token counts. :func:`import_reference` counts each example's response tokens as
the paper's script tokenised it (:func:`response_lengths`), with a tokenizer the user names, so that
the analysis can control imported results for length as it does layergrad's own runs.

The follow-up paper's format (``unified``: every singular value and the layer x layer cosines) is
:mod:`layergrad.store.unified`; :func:`export_reference` writes either, :func:`import_reference` reads
either (told apart line by line: a line with ``S_list`` or ``cosine_sim`` is the follow-up's).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from layergrad.inputs.data import content_id
from layergrad.errors import LayergradError
from layergrad.inputs.targets import layer_of, role_of
from layergrad.store import RunStore, load_results
from layergrad.store.rows import example_row, module_row
from layergrad.store.schema import SCHEMA_VERSION
from layergrad.store.parts import write_text_atomic

KEYS = ("M_mean", "M_max", "M_min", "frobenius_norm", "S_sum", "S_max", "S_min")
#: reference key -> our column
COLUMN = {
    "M_mean": "m_mean",
    "M_max": "m_max",
    "M_min": "m_min",
    "frobenius_norm": "frobenius",
    "S_sum": "nuclear",
    "S_max": "spectral",
    "S_min": "min_sigma",
}


class ReferenceFormatError(LayergradError, ValueError):
    pass


def _num(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def to_reference_lines(run_dir: str | Path) -> tuple[list[str], int]:
    """Lines for every ok example, in example order; and how many lacked the elementwise values."""
    res = load_results(run_dir)
    lines, missing = [], 0
    mods = res.modules.groupby("id", sort=False)
    for _, ex in res.ok.iterrows():
        rec = {"instruction": ex["instruction"], "output": ex["output"], "loss": float(ex["loss"])}
        if ex["id"] in mods.groups:
            for _, m in mods.get_group(ex["id"]).iterrows():
                vals = {k: _num(m[COLUMN[k]]) for k in KEYS}
                if vals["M_max"] is None:
                    missing += 1
                rec[m["param"]] = vals
        lines.append(json.dumps(rec))
    return lines, missing


FORMATS = ("reference", "unified")  # the first paper's script's lines, the follow-up's


def export_reference(run_dir: str | Path, to: str | Path, fmt: str = "reference") -> tuple[int, int]:
    """Write the paper's format (``fmt="unified"``: the follow-up's) atomically; returns ``(examples
    written, modules without M_*)`` (unified: ``(examples, cosine entries missing, written as null)``)."""
    if fmt == "unified":
        from layergrad.store import unified

        lines, missing = unified.to_lines(load_results(run_dir))
    elif fmt == "reference":
        lines, missing = to_reference_lines(run_dir)
    else:
        raise ReferenceFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    Path(to).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic("".join(line + "\n" for line in lines), Path(to))
    return len(lines), missing


#: The paper's script's default --max_length.
PAPER_MAX_LENGTH = 1024


def response_lengths(records: list[tuple[str, str]], tokenizer, prompt_mode: str = "base",
                     max_length: int | None = PAPER_MAX_LENGTH, source: str = "") -> list:
    """The :class:`~layergrad.inputs.prompting.Encoded` of each ``(instruction, output)`` as the paper's script
    tokenised it: ``base``: ``instruction + "\n" + output``; ``chat``: the chat template of the system turn
    "You are a helpful assistant." and the instruction, with the generation prompt, then the output; the
    prompt is ``tokenizer.encode(text[:text.rfind(output)])`` (its ``n_response`` is the loss terms the
    script's loss had), the text cut at ``max_length`` tokens as the script does."""
    from layergrad.inputs.data import Example
    from layergrad.inputs.prompting import encode
    from layergrad.vocab import DEFAULT_SYSTEM_PROMPT

    return [encode(Example(id=str(i), index=i, source=source, group="", prompt=ins, response=out), tokenizer, prompt_mode,
                   max_length, reference=True, system=DEFAULT_SYSTEM_PROMPT) for i, (ins, out) in enumerate(records)]


def import_reference(path: str | Path, to: str | Path, group: str | None = None, *, tokenizer=None,
                     tokenizer_name: str | None = None, prompt_mode: str = "base",
                     max_length: int | None = PAPER_MAX_LENGTH) -> int:
    """Read a JSONL file written by the paper's code (either script's) into a run directory; returns the examples read.

    ``tokenizer`` (a loaded tokenizer, named ``tokenizer_name`` in the manifest): each example's token
    counts (``n_tokens``, ``n_prompt_tokens``, ``n_response_tokens``) as the paper's script tokenised it in
    ``prompt_mode`` (:func:`response_lengths`); ``None``: no counts (null), as before.
    """
    from layergrad.store import unified

    path = Path(path)
    group = group or path.stem
    examples, modules, module_names, cosines, formats = [], [], [], [], set()
    seen: dict[str, int] = {}
    problems = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{path}: line {lineno}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(rec, dict):
                problems.append(f"{path}: line {lineno}: expected an object, found {type(rec).__name__}")
                continue
            bad = [k for k in ("instruction", "output") if not isinstance(rec.get(k), str)]
            if not isinstance(rec.get("loss"), (int, float)):
                bad.append("loss")
            params = {k: v for k, v in rec.items() if k not in ("instruction", "output", "loss")}
            fmt = "unified" if unified.is_unified(rec) else "reference"
            if fmt == "unified":
                bad += unified.problems_of(rec)
            else:
                for name, v in params.items():
                    if not isinstance(v, dict) or any(not isinstance(v.get(k), (int, float)) for k in ("S_sum", "S_max", "S_min", "frobenius_norm")):
                        bad.append(name)
            if bad:
                problems.append(f"{path}: line {lineno}: field(s) {', '.join(repr(b) for b in bad)} missing or not numeric as the reference format requires")
                continue
            base = content_id({"instruction": rec["instruction"], "output": rec["output"]})
            n = seen.get(base, 0)
            seen[base] = n + 1
            ex_id = base if n == 0 else f"{base}-{n}"
            order = len(examples)
            examples.append(example_row(
                id=ex_id, group=group, source=str(path), index=lineno - 1, order=order, status="ok",
                instruction=rec["instruction"], output=rec["output"], loss=float(rec["loss"]),
            ))
            formats.add(fmt)
            if fmt == "unified":
                mods, cos = unified.rows_of(rec, ex_id)
                modules += mods
                cosines += cos
                module_names += [m["module"] for m in mods if m["module"] not in module_names]
                continue
            for name, v in params.items():
                module = name[: -len(".weight")] if name.endswith(".weight") else name
                if module not in module_names:
                    module_names.append(module)
                s_sum, s_max, frob = float(v["S_sum"]), float(v["S_max"]), float(v["frobenius_norm"])
                modules.append(module_row(
                    id=ex_id, module=module, param=name, layer=layer_of(module), role=role_of(module),
                    nuclear=s_sum, spectral=s_max, frobenius=frob, min_sigma=float(v["S_min"]),
                    top1_share=s_max / s_sum if s_sum else float("nan"),
                    effective_rank=float("nan"),  # needs the whole spectrum, which the format lacks
                    stable_rank=frob * frob / (s_max * s_max) if s_max else float("nan"),
                    spectrum=[], m_mean=_num(v.get("M_mean")), m_max=_num(v.get("M_max")), m_min=_num(v.get("M_min")),
                    method="imported",
                ))
    if problems:
        raise ReferenceFormatError("\n".join(problems) + "\nFix or remove these lines; nothing was imported.")
    if not examples:
        raise ReferenceFormatError(f"{path}: no records")
    if len(formats) > 1:
        raise ReferenceFormatError(f"{path}: mixes lines of the first paper's script (S_sum, S_max, S_min) and the follow-up's "
                                   "(S_list, cosine_sim); import each kind from its own file")
    fmt = formats.pop()
    if tokenizer is not None:
        encoded = response_lengths([(e["instruction"], e["output"]) for e in examples], tokenizer, prompt_mode, max_length, str(path))
        for row, enc in zip(examples, encoded):
            row.update(n_tokens=enc.n_tokens, n_prompt_tokens=enc.n_prompt, n_response_tokens=enc.n_response,
                       n_response_tokens_full=enc.n_response, truncated=enc.truncated)
    layers = [layer_of(m) for m in module_names]
    store = RunStore(to, writer="import")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model": f"imported:{path.name}", "model_fingerprint": None, "prompt_mode": "imported", "max_length": None,
        "modules": "reference", "module_names": module_names, "n_layers": max(layers) + 1 if layers else 0,
        "data": [str(path)], "data_fingerprint": None, "group": group, "dtype": None, "stats_dtype": None,
        "spectrum_k": 0, "elementwise": True, "loss_rule": "imported", "imported_from": str(path),
        # how n_response_tokens was counted (None: not counted); the paper's tokenisation, tokenizer named by the user
        "length_tokenizer": tokenizer_name if tokenizer is not None else None,
        "length_prompt_mode": prompt_mode if tokenizer is not None else None,
        "length_max_length": max_length if tokenizer is not None else None,
    }
    if fmt == "unified":  # every singular value; the cosines the file holds
        manifest.update(modules="unified", spectrum_k=None, cosine=bool(cosines),
                        cosine_layers=any(c["kind"].startswith("gap") for c in cosines), imported_format="unified")
    store.open(manifest)
    if store.done_ids():
        raise ReferenceFormatError(f"{to} already holds results; import into an empty directory")
    store.write_part(examples, modules, cosines or None)
    return len(examples)
