"""Combine run directories written by shards into one store, or check one directory.

Shards come from ``layergrad run --shard i/N`` (scheduler job arrays, each job into its own
directory or all into one) and from torchrun ranks. :func:`check` checks that every
directory holds the same run (:data:`MERGE_KEYS` of the manifests must be equal: same
model, prompt mode, modules, data, maximum length, dtype, ...), counts the examples each
writer stored, finds examples stored twice and, by reading the data files named in the
manifest, examples not stored at all. :func:`merge` then writes one store that
:func:`store.load_results` reads exactly as a single-process run of the same data.

Nothing in the source directories is changed.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from layergrad.store import ConfigMismatch, RunStore
from layergrad.store.manifest import identity_value
from layergrad.store.run import IDENTITY_KEYS
from layergrad.store.schema import MODULES

__all__ = ["MERGE_KEYS", "MergeError", "MergeReport", "check", "check_compatible", "expected_ids", "format_report", "merge"]

#: Manifest keys that must be equal in every merged directory.
MERGE_KEYS = IDENTITY_KEYS  # schema_version is one of them
#: Keys that may differ (a resume accepts them too), but a merged store then mixes them: reported.
NOTED_KEYS = ("layergrad_version",)

_SHOWN = 5  # ids listed in a report line


class MergeError(ConfigMismatch):
    """The directories cannot be merged; the message names the key and both values."""


@dataclass
class Source:
    path: Path
    manifest: dict
    store: RunStore
    parts: dict[str, list[str]] = field(default_factory=dict)  # tag -> example ids of that part
    statuses: dict[str, str] = field(default_factory=dict)  # id -> status
    notes: list[str] = field(default_factory=list)


@dataclass
class MergeReport:
    sources: list[Source]
    stored: dict[str, str]  # id -> "DIR:tag" of its first stored copy
    statuses: dict[str, int]  # status -> examples (first copies)
    duplicates: dict[str, list[str]]  # id -> every "DIR:tag" holding it, when more than one
    expected: int | None  # examples the data holds; None when the data could not be read
    missing: list[str]  # ids in the data that no directory stores (data order)
    unexpected: list[str]  # stored ids that the data does not hold
    notes: list[str]
    written: Path | None = None

    @property
    def complete(self) -> bool:
        return self.expected is not None and not self.missing


# ---------------------------------------------------------------------------------------


def _open(path) -> Source:
    store = RunStore(path)
    manifest = store.manifest()
    if manifest is None:
        raise FileNotFoundError(f"{path} is not a layergrad run directory (no manifest.json); give the --out directories of the shard runs")
    src = Source(Path(path), manifest, store)
    superseded = store.superseded()  # failed rows a retry replaced: not copies of the example
    for tag in store.committed_tags():
        tables = store.read_part_tables(tag, examples_only=True)
        if tables is None:
            src.notes.append(f"{path}: part {tag} is unreadable and was left out")
            continue
        ex = tables[0]
        gone = superseded.get(tag, set())
        pairs = [(i, s) for i, s in zip(ex.column("id").to_pylist(), ex.column("status").to_pylist()) if i not in gone]
        src.parts[tag] = [i for i, _ in pairs]
        src.statuses.update(pairs)
    return src


def check_compatible(sources: list[Source]) -> list[str]:
    """Raise :class:`MergeError` unless every manifest agrees on :data:`MERGE_KEYS`; return notes."""
    first = sources[0]
    for s in sources[1:]:
        for k in MERGE_KEYS:
            a, b = identity_value(first.manifest, k), identity_value(s.manifest, k)
            if a != b:
                raise MergeError(
                    f"cannot merge {s.path} with {first.path}: they hold different runs.\n"
                    f"  {k}: {a!r} in {first.path}\n"
                    f"  {k}: {b!r} in {s.path}\n"
                    "Only shards of one run (same model, prompt mode, modules, data, max length, dtype, "
                    "statistics options) can be merged; rerun the odd shard with the others' options into a new --out."
                )
    notes = []
    for k in NOTED_KEYS:
        values = {repr(s.manifest.get(k)) for s in sources}
        if len(values) > 1:
            notes.append(f"note: {k} differs between the directories ({', '.join(sorted(values))}); the merged store mixes them")
    return notes


def expected_ids(manifest: dict) -> tuple[list[str] | None, str | None]:
    """Ids of every example (and invalid record) the run's data holds, in data order.

    Reads the data files named in the manifest with the manifest's selection (group,
    fields, limit, record slice). Returns ``(None, why)`` when that is impossible: a file
    is unreadable, or the files changed since the run (their fingerprint differs).
    """
    from layergrad.config import RunConfig
    from layergrad.inputs.data import DataError
    from layergrad.inputs.dataset import data_fingerprint, load_data
    from layergrad.store.rows import invalid_rows

    paths = manifest.get("data") or []
    cfg = RunConfig(
        data=list(paths),
        out="",
        group=manifest.get("group"),
        fields=manifest.get("fields") or {},
        limit=manifest.get("limit"),
        record_slice=manifest.get("record_slice"),
        skip_invalid=bool(manifest.get("skip_invalid", False)),
    )
    unreadable = [p for p in paths if not os.path.isfile(p)]
    if not paths or unreadable:
        where = ", ".join(unreadable) or "(none recorded)"
        return None, (
            f"cannot check for missing examples: data file(s) {where} not readable from {os.getcwd()} "
            "(run `layergrad merge` where the data paths of the manifest resolve)"
        )
    try:
        if data_fingerprint(cfg) != manifest.get("data_fingerprint"):
            return None, f"cannot check for missing examples: the data files {', '.join(paths)} changed since the run (fingerprint differs)"
        examples, problems = load_data(cfg)
    except (DataError, OSError, ValueError) as e:
        return None, f"cannot check for missing examples: reading the data failed: {e}"
    ids = [ex.id for ex in examples]
    if cfg.skip_invalid:
        ids += [r["id"] for r in invalid_rows(problems, len(examples))]
    return ids, None


def check(dirs) -> MergeReport:
    """Check directories (one or many) of one run; nothing is written."""
    paths = [Path(d) for d in dirs]
    if not paths:
        raise ValueError("give at least one run directory")
    seen: dict[Path, Path] = {}
    for p in paths:
        r = p.resolve()
        if r in seen:
            raise MergeError(f"{p} is given twice (as {seen[r]} and {p})")
        seen[r] = p
    sources = [_open(p) for p in paths]
    notes = [n for s in sources for n in s.notes]
    notes += check_compatible(sources)

    stored: dict[str, str] = {}
    copies: dict[str, list[str]] = {}
    statuses: dict[str, int] = {}
    for s in sources:
        for tag, ids in s.parts.items():
            for i in ids:
                where = f"{s.path}:{tag}"
                copies.setdefault(i, []).append(where)
                if i not in stored:
                    stored[i] = where
                    st = s.statuses[i]
                    statuses[st] = statuses.get(st, 0) + 1
    duplicates = {i: w for i, w in copies.items() if len(w) > 1}

    want, why = expected_ids(sources[0].manifest)
    if why:
        notes.append(why)
    missing = [i for i in want if i not in stored] if want is not None else []
    wanted = set(want or ())
    unexpected = [i for i in stored if i not in wanted] if want is not None else []
    return MergeReport(sources, stored, statuses, duplicates, None if want is None else len(want), missing, unexpected, notes)


def merge(dirs, to) -> MergeReport:
    """Write one store at ``to`` holding every example of ``dirs`` once (the first copy).

    ``to`` must not exist yet. It is written under a temporary name and renamed at the end,
    so it is either absent or complete. Missing examples do not stop the merge (the report
    lists them); running ``layergrad run`` with the same options and ``--out`` ``to`` later
    computes just those.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    to = Path(to)
    if to.exists():
        raise MergeError(f"{to} exists already; merge into a new directory (the sources are never changed)")
    report = check(dirs)
    if any(to.resolve() == s.path.resolve() for s in report.sources):
        raise MergeError(f"{to} is one of the directories to merge; choose a new --to")
    tmp = to.with_name(f"{to.name}.merging-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    manifest = dict(report.sources[0].manifest, merged_from=[str(s.path) for s in report.sources])
    with RunStore(tmp) as first:
        first.open(manifest)  # a new directory: its lock only keeps another merge into the same --to out
    try:
        for j, s in enumerate(report.sources):
            out = RunStore(tmp, writer=f"m{j}")
            for tag in s.parts:
                keep = [i for i in s.parts[tag] if report.stored[i] == f"{s.path}:{tag}"]
                if not keep:
                    continue
                ex, mod, cos = s.store.read_part_tables(tag)
                ids = pa.array(keep, pa.string())
                ex = ex.filter(pc.is_in(ex.column("id"), value_set=ids))
                mod = mod.filter(pc.is_in(mod.column("id"), value_set=ids)) if mod is not None else None
                cos = cos.filter(pc.is_in(cos.column("id"), value_set=ids)) if cos is not None else None
                sh = s.store.read_shares(tag)
                sh = sh.filter(pc.is_in(sh.column("id"), value_set=ids)) if sh.num_rows else None
                out.write_tables(ex, mod if mod is not None else MODULES.empty_table(), cos, shares=sh)
        os.replace(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.written = to
    return report


# ---------------------------------------------------------------------------------------


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:_SHOWN])
    return shown + (f", ... ({len(ids) - _SHOWN} more)" if len(ids) > _SHOWN else "")


def format_report(r: MergeReport) -> str:
    lines = []
    for s in r.sources:
        writers = sorted({t.rsplit("-", 1)[0] for t in s.parts})
        n = sum(len(v) for v in s.parts.values())
        lines.append(f"{s.path}: {n} example rows in {len(s.parts)} parts (writers: {', '.join(writers) or 'none'})")
    m = r.sources[0].manifest
    same = ", ".join(f"{k}={str(m.get(k))[:16]}" for k in ("model_fingerprint", "prompt_mode", "modules", "max_length", "dtype", "data_fingerprint"))
    lines.append(f"{'one run' if len(r.sources) == 1 else 'compatible'}: {same}")
    counts = ", ".join(f"{v} {k}" for k, v in sorted(r.statuses.items()))
    line = f"{len(r.stored)} distinct examples stored ({counts or 'none'})"
    if r.expected is not None:
        line += f"; the data holds {r.expected}: " + (f"{len(r.missing)} missing" if r.missing else "none missing")
    lines.append(line)
    if r.missing:
        lines.append(f"missing: {_ids(r.missing)}")
        lines.append("  rerun the shard command(s) that did not finish (they resume and compute only what is missing),")
        lines.append("  or `layergrad run` with the same options and --out the merged directory")
    if r.unexpected:
        lines.append(f"{len(r.unexpected)} stored examples are not in the data: {_ids(r.unexpected)}")
    if r.duplicates:
        first = next(iter(r.duplicates))
        lines.append(
            f"{len(r.duplicates)} examples are stored more than once (the first copy is used): {_ids(list(r.duplicates))}; "
            f"e.g. {first} in {', '.join(r.duplicates[first])}"
        )
    lines += r.notes
    if r.written:
        lines.append(f"merged into {r.written}")
    return "\n".join(lines)
