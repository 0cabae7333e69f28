"""A run directory: manifest + committed parts; resume by example id.

Layout::

    DIR/manifest.json                 # configuration of the run (see RunStore.open)
    DIR/parts/modules-<tag>.parquet   # written first
    DIR/parts/cosine-<tag>.parquet    # optional, written second
    DIR/parts/shares-<tag>.parquet    # optional (--token-shares), written third
    DIR/parts/examples-<tag>.parquet  # written last: the commit marker of the part

``<tag>`` is ``<writer>-<seq>`` where ``writer`` names the process (``r0`` for a single
process, ``r<rank>`` under torchrun, ``s<i>of<n>`` for ``--shard``), so concurrent writers never
collide and a part's rows are never split across files. :meth:`RunStore.open` takes the writer's
lock (:mod:`.lock`): two processes of the same writer name never write one directory at once.

The examples file of a part records the SHA-256 of the part's other files in its Parquet
metadata (``layergrad.checksums``) and carries Parquet page CRCs itself. A part whose files do
not match counts as absent for every reader (:meth:`RunStore.part_problem`): resume quarantines
it and computes its examples again, :func:`load_results` leaves it out with a warning naming it,
``layergrad verify`` and ``layergrad merge`` report it. Parts written before checksums existed
are checked by their Parquet footers only.
"""
from __future__ import annotations

import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ..errors import LayergradError
from . import schema
from layergrad.store.manifest import IDENTITY_KEYS, identity_value  # manifest keys that must match to resume
from .lock import ManifestLock, WriterLock
from .manifest import describe_difference, extend_selection
from .parts import TMP_SUFFIX, StoreWriteError, file_checksum, part_problem, read_part, write_atomic, write_text_atomic

MANIFEST = "manifest.json"
PARTS = "parts"
UNREADABLE = "unreadable"  # parts/unreadable/: committed parts that could not be read, moved aside on resume
CHECKSUMS_KEY = b"layergrad.checksums"  # in an examples part's Parquet metadata: {file name: sha256 hex}

_TAG = re.compile(r"^(examples|modules|cosine|shares)-(.+)\.parquet$")
_OPTIONAL = ("cosine", "shares")  # part kinds a part may lack; one it has must be readable for the part to be used


class ConfigMismatch(LayergradError, ValueError):
    """Raised when a run directory is resumed with a different configuration."""


@dataclass
class Results:
    """Everything a run directory holds, as pandas DataFrames sorted by example order."""

    manifest: dict
    examples: "pd.DataFrame"  # noqa: F821
    modules: "pd.DataFrame"  # noqa: F821
    cosine: "pd.DataFrame"  # noqa: F821
    path: Path

    @property
    def ok(self) -> "pd.DataFrame":  # noqa: F821
        return self.examples[self.examples["status"] == "ok"]


class RunStore:
    def __init__(self, path: str | Path, writer: str = "r0"):
        self.path = Path(path)
        self.parts = self.path / PARTS
        self.writer = writer
        self._seq = None
        self._whole: set[str] = set()  # committed parts found whole (a committed part never changes)
        self._lock = WriterLock(self.path, writer)
        self.notes: list[str] = []  # what the last open() extended (more data, a larger --limit)

    # ---- manifest -------------------------------------------------------------------------
    def manifest(self) -> dict | None:
        p = self.path / MANIFEST
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:  # written atomically by us, so not ours
            raise ConfigMismatch(f"{p} is not a layergrad manifest ({e}); use another --out directory") from None

    def open(self, manifest: dict, *, lock: bool = True, wait: bool = False, log=None, add_data: bool = False) -> list[str]:
        """Take this writer's lock, then create the directory with ``manifest``, or check that it
        holds the same run and extend its recorded selection (data files, ``--limit``).

        Raises :class:`~layergrad.store.lock.RunLocked` when another process holds the writer's lock
        (``wait``: wait for it instead), :class:`ConfigMismatch` naming every differing option; nothing
        is written then; also when ``manifest`` names data files the run does not hold and ``add_data`` is
        false (a run grows by other files only on purpose). Returns notes of what the run's selection grew by.
        :meth:`close` releases the lock.
        """
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreWriteError(self.parts, e) from e
        try:
            if lock:
                self._lock.acquire(wait=wait, log=log)
            with ManifestLock(self.path) if lock else _nothing():
                self.notes = self._open_manifest(manifest, add_data)
        except BaseException:
            self.close()
            raise
        return self.notes

    def close(self) -> None:
        """Release this writer's lock (idempotent)."""
        self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _open_manifest(self, manifest: dict, add_data: bool = False) -> list[str]:
        old = self.manifest()
        if old is None:
            write_text_atomic(json.dumps(manifest, indent=2, sort_keys=True), self.path / MANIFEST)
            return []
        diffs = [
            "  " + describe_difference(k, old.get(k), manifest.get(k), old, manifest)
            for k in IDENTITY_KEYS
            if identity_value(old, k) != identity_value(manifest, k)
        ]
        if diffs:
            raise ConfigMismatch(
                f"{self.path} holds a run with a different configuration:\n"
                + "\n".join(diffs)
                + f"\nResults here are kept. To resume them, rerun with the stored settings; to start the new "
                f"configuration, use another --out directory (for example --out {_free_sibling(self.path)})."
            )
        if not add_data:
            self.refuse_other_data(manifest.get("data") or [], old)
        self._clean_own_temporaries()
        grown, notes = extend_selection(old, manifest)
        if grown != old:
            write_text_atomic(json.dumps(grown, indent=2, sort_keys=True), self.path / MANIFEST)
        return notes

    def refuse_other_data(self, data: list, old: dict | None = None) -> None:
        """:class:`ConfigMismatch` when ``data`` names files the run does not hold (``--add-data`` allows them),
        naming the stored files, the new ones and the flag. Nothing when there is no run here yet."""
        old = self.manifest() if old is None else old
        if old is None:
            return
        stored = list(old.get("data") or [])
        added = [str(p) for p in data if str(p) not in stored]
        if added:
            raise ConfigMismatch(
                f"{self.path} holds a run of {', '.join(stored)}; --data also names {', '.join(added)}. "
                f"To add {'these files' if len(added) > 1 else 'this file'} to the run (its reports then hold the examples "
                f"of every file), pass --add-data; to run {'them' if len(added) > 1 else 'it'} on "
                f"its own, use another --out directory (for example --out {_free_sibling(self.path)}).")

    # ---- parts ----------------------------------------------------------------------------
    def _own(self, tag: str) -> bool:
        """Whether a part tag was written by this writer (other writers may be running now)."""
        return tag.startswith(f"{self.writer}-") and tag[len(self.writer) + 1 :].isdigit()

    def _clean_own_temporaries(self) -> None:
        # only this writer's: another process (a torchrun rank, a --shard job) may be writing its own now
        for p in self.parts.glob(f"*{TMP_SUFFIX}"):
            m = _TAG.match(p.name.split(".parquet.", 1)[0] + ".parquet")
            if m and self._own(m.group(2)):
                p.unlink(missing_ok=True)

    def committed_tags(self) -> list[str]:
        """Tags of committed parts (every writer), sorted."""
        return self._committed_tags()

    def read_part_tables(self, tag: str, examples_only: bool = False) -> tuple[pa.Table, pa.Table | None, pa.Table | None] | None:
        """The examples, modules and cosine tables of one committed part; ``None`` if it cannot be used."""
        e = read_part(self.parts / f"examples-{tag}.parquet")
        if e is None or self.part_problem(tag) is not None:
            return None
        if examples_only:
            return e, None, None
        m = read_part(self.parts / f"modules-{tag}.parquet")
        c = self.parts / f"cosine-{tag}.parquet"
        return e, m, (read_part(c) if c.exists() else None)

    def _committed_tags(self) -> list[str]:
        if not self.parts.exists():
            return []
        tags = []
        for p in self.parts.iterdir():
            m = _TAG.match(p.name)
            if m and m.group(1) == "examples":
                tags.append(m.group(2))
        return sorted(tags)

    def done_ids(self) -> set[str]:
        """Ids of examples already stored (any status) in committed parts that can be read whole."""
        return set(self.stored_texts())

    def stored_texts(self) -> dict[str, tuple[str | None, str | None]]:
        """Id -> (instruction, output) as stored, of every example in committed parts that can be used whole."""
        texts: dict[str, tuple] = {}
        for tag in self._committed_tags():
            if self.part_problem(tag) is not None:
                continue
            t = read_part(self.parts / f"examples-{tag}.parquet")
            if t is not None:
                cols = [t.column(c).to_pylist() if c in t.column_names else [None] * t.num_rows
                        for c in ("id", "instruction", "output")]
                texts.update((i, (a, b)) for i, a, b in zip(*cols))
        return texts

    def _example_rows(self) -> list[tuple[str, str, str, str | None]]:
        """``(tag, id, status, reason)`` of every row of the committed parts that can be used, in part order."""
        rows = []
        for tag in self._committed_tags():
            tables = self.read_part_tables(tag, examples_only=True)
            if tables is None:
                continue
            e = tables[0]
            reasons = e.column("reason").to_pylist() if "reason" in e.column_names else [None] * e.num_rows
            rows += zip([tag] * e.num_rows, e.column("id").to_pylist(), e.column("status").to_pylist(), reasons)
        return rows

    def superseded(self) -> dict[str, set[str]]:
        """Per part tag, the ids whose ``failed`` row a retry replaced: the example has another row in the
        store that is not failed, or a failed one in a later part. Every reader leaves these rows out."""
        rows = self._example_rows()
        ok = {i for _, i, status, _ in rows if status != "failed"}
        last_failed = {i: tag for tag, i, status, _ in rows if status == "failed"}
        out: dict[str, set[str]] = {}
        for tag, i, status, _ in rows:
            if status == "failed" and (i in ok or last_failed[i] != tag):
                out.setdefault(tag, set()).add(i)
        return out

    def failed_reasons(self) -> dict[str, str]:
        """Id -> reason of the examples whose only use is a ``failed`` row (the latest, when retried before)."""
        rows = self._example_rows()
        ok = {i for _, i, status, _ in rows if status != "failed"}
        return {i: reason or "" for _, i, status, reason in rows if status == "failed" and i not in ok}

    def status_counts(self) -> dict[str, int]:
        """How many examples of the whole store have each status."""
        counts: dict[str, int] = {}
        for r in self.read_tables()[0].column("status").to_pylist():
            counts[r] = counts.get(r, 0) + 1
        return counts

    def part_problem(self, tag: str) -> str | None:
        """Why a committed part cannot be used (a file of it missing or cut short), else ``None``.

        Checks the Parquet footers only. A part that cannot be used counts as absent, for resume
        and for every reader alike, so its examples are computed again, never half-stored.
        """
        if tag in self._whole:
            return None
        files = [f"examples-{tag}.parquet", f"modules-{tag}.parquet"]
        files += [f"{kind}-{tag}.parquet" for kind in _OPTIONAL if (self.parts / f"{kind}-{tag}.parquet").exists()]
        for name in files:
            problem = part_problem(self.parts / name)
            if problem is not None:
                return f"{name} {problem}"
        problem = self._checksum_problem(tag)
        if problem is not None:
            return problem
        self._whole.add(tag)
        return None

    def checksums(self, tag: str) -> dict[str, str] | None:
        """The checksums a part's examples file records (``None``: written before checksums existed)."""
        import pyarrow.parquet as pq

        meta = pq.read_schema(self.parts / f"examples-{tag}.parquet").metadata or {}
        raw = meta.get(CHECKSUMS_KEY)
        return None if raw is None else json.loads(raw)

    def _checksum_problem(self, tag: str) -> str | None:
        name = f"examples-{tag}.parquet"
        if read_part(self.parts / name) is None:  # its page CRCs
            return f"{name} is damaged (a Parquet page fails its checksum)"
        try:
            sums = self.checksums(tag)
        except (OSError, ValueError, pa.ArrowException) as e:
            return f"{name} has unreadable checksums ({e})"
        if sums is None:
            return None
        for fname, want in sorted(sums.items()):
            try:
                got = file_checksum(self.parts / fname)
            except FileNotFoundError:
                return f"{fname} missing"
            except OSError as e:
                return f"{fname} unreadable ({e})"
            if got != want:
                return f"{fname} is damaged (SHA-256 {got[:12]}..., recorded {want[:12]}...)"
        return None

    def quarantine_unreadable(self) -> list[str]:
        """Move this writer's committed parts that cannot be used to ``parts/unreadable/`` (never deleted).

        Returns one note per part moved. Other writers' parts are left to them (they may be running).
        """
        notes = []
        for tag in self._committed_tags():
            if not self._own(tag):
                continue
            problem = self.part_problem(tag)
            if problem is None:
                continue
            dest = self.parts / UNREADABLE
            try:
                dest.mkdir(exist_ok=True)
                stamp = time.strftime("%Y%m%d-%H%M%S")
                for kind in ("examples", "modules", *_OPTIONAL):  # the commit marker first
                    f = self.parts / f"{kind}-{tag}.parquet"
                    if f.exists():
                        f.replace(dest / f"{f.name}.{stamp}")
            except OSError as e:
                raise StoreWriteError(dest, e) from e
            notes.append(f"layergrad: part {tag} of {self.path} cannot be read ({problem}); "
                         f"moved to {dest}, its examples will be computed again")
        return notes

    def _next_seq(self) -> int:
        if self._seq is None:
            prefix = f"{self.writer}-"
            seqs = [int(t[len(prefix):]) for t in self._committed_tags() if t.startswith(prefix) and t[len(prefix):].isdigit()]
            self._seq = max(seqs, default=-1) + 1
        seq = self._seq
        self._seq += 1
        return seq

    def write_part(self, examples: list[dict], modules: list[dict], cosine: list[dict] | None = None,
                   shares: list[dict] | None = None) -> str:
        """Commit one part: modules (cosine, shares) first, the examples part last."""
        if not examples:
            return ""
        return self.write_tables(
            pa.Table.from_pylist(examples, schema=_examples_schema(examples)),
            pa.Table.from_pylist(modules, schema=schema.MODULES),
            pa.Table.from_pylist(cosine, schema=schema.COSINE) if cosine else None,
            shares=pa.Table.from_pylist(shares, schema=schema.SHARES) if shares else None,
        )

    def write_tables(self, examples: pa.Table, modules: pa.Table, cosine: pa.Table | None = None,
                     shares: pa.Table | None = None) -> str:
        """Commit one part from Arrow tables (same order as :meth:`write_part`)."""
        tag = f"{self.writer}-{self._next_seq():06d}"
        sums = {f"modules-{tag}.parquet": write_atomic(modules, self.parts / f"modules-{tag}.parquet")}
        if cosine is not None and cosine.num_rows:
            sums[f"cosine-{tag}.parquet"] = write_atomic(cosine, self.parts / f"cosine-{tag}.parquet")
        if shares is not None and shares.num_rows:
            sums[f"shares-{tag}.parquet"] = write_atomic(shares, self.parts / f"shares-{tag}.parquet")
        meta = dict(examples.schema.metadata or {})
        meta[CHECKSUMS_KEY] = json.dumps(sums, sort_keys=True).encode()
        write_atomic(examples.replace_schema_metadata(meta), self.parts / f"examples-{tag}.parquet")
        self._whole.add(tag)
        return tag

    def remove_orphans(self) -> list[Path]:
        """Delete this writer's module/cosine parts whose examples part was never committed (a crash).

        Other writers' files are left alone: they may be running now, between their modules
        part and their examples part. Their orphans are ignored by every reader.
        """
        committed = set(self._committed_tags())
        removed = []
        if not self.parts.exists():
            return removed
        for p in self.parts.iterdir():
            m = _TAG.match(p.name)
            if m and m.group(1) != "examples" and m.group(2) not in committed and self._own(m.group(2)):
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed

    # ---- reading --------------------------------------------------------------------------
    def read_tables(self) -> tuple[pa.Table, pa.Table, pa.Table]:
        """Committed rows as Arrow tables, in part order (not yet sorted)."""
        import pyarrow.compute as pc

        ex, mod, cos = [], [], []
        superseded = self.superseded()  # failed rows a retry replaced
        for tag in self._committed_tags():
            problem = self.part_problem(tag)
            e = read_part(self.parts / f"examples-{tag}.parquet") if problem is None else None
            m = read_part(self.parts / f"modules-{tag}.parquet") if e is not None else None
            has_c = (self.parts / f"cosine-{tag}.parquet").exists()
            c = read_part(self.parts / f"cosine-{tag}.parquet") if has_c and m is not None else None
            sh = self.parts / f"shares-{tag}.parquet"  # read by read_shares(); here its footer is checked
            if e is None or m is None or (has_c and c is None) or (sh.exists() and part_problem(sh)):  # whole or not at all
                warnings.warn(f"{self.parts}: part {tag} cannot be read and is left out ({problem or 'unreadable'}); "
                              "rerun `layergrad run` with the same settings to move it to parts/unreadable/ and "
                              "compute its examples again", stacklevel=2)
                continue
            if tag in superseded:
                e = e.filter(pc.invert(pc.is_in(e.column("id"), value_set=pa.array(sorted(superseded[tag]), pa.string()))))
            ex.append(e)
            mod.append(m)
            if c is not None:
                cos.append(c)
        return (
            _concat(ex, schema.EXAMPLES),
            _concat(mod, schema.MODULES),
            _concat(cos, schema.COSINE),
        )


    def read_shares(self, tag: str | None = None) -> pa.Table:
        """The token-share rows (:data:`~layergrad.store.schema.SHARES`) of one committed part, or of every
        part :meth:`read_tables` uses (in part order); an empty table where there are none."""
        tables = []
        for t in ([tag] if tag is not None else self._committed_tags()):
            p = self.parts / f"shares-{t}.parquet"
            if not p.exists() or (tag is None and self.part_problem(t) is not None):
                continue
            table = read_part(p)
            if table is None:  # its footer was whole but its contents are not: the part is left out
                warnings.warn(f"{p} cannot be read; its token shares are left out", stacklevel=2)
                continue
            tables.append(table)
        return _concat(tables, schema.SHARES)


def load_shares(path: str | Path, ids=None) -> "pd.DataFrame":  # noqa: F821
    """The token shares of a run directory (``run --token-shares``) as a DataFrame, ``ids`` only if given;
    empty when the run has none. Duplicated examples (a part written twice) keep their last part's rows."""
    table = RunStore(path).read_shares()
    df = table.to_pandas()
    if ids is not None:
        df = df[df["id"].isin(set(ids))]
    if len(df):
        df = df.drop_duplicates(["id", "segment", "module_group", "position"], keep="last").reset_index(drop=True)
    return df


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def refuse_changed_records(stored: dict[str, tuple], examples, scored_text) -> None:
    """Raise :class:`ConfigMismatch` naming each example whose id is stored with another text than it has now.

    ``scored_text(ex)`` is the (instruction, output) pair the examples table stores for ``ex``.
    """
    changed = []
    for ex in examples:
        old = stored.get(ex.id)
        if old is None or old == (None, None):  # not stored, or stored without its text (an invalid record)
            continue
        now = scored_text(ex)
        if old != now:
            what = "instruction" if old[0] != now[0] else "output"
            changed.append(f"  id {ex.id!r} ({ex.source}, record {ex.index}): its {what} differs from the stored one")
    if changed:
        shown = changed[:10] + ([f"  ... and {len(changed) - 10} more"] if len(changed) > 10 else [])
        raise ConfigMismatch(
            f"{len(changed)} record(s) of the data changed since they were stored under the same id:\n"
            + "\n".join(shown)
            + "\nAn id names one example. Give changed records new ids, or compute the changed data into another --out."
        )


@dataclass
class VerifyReport:
    parts: int  # committed parts
    whole: int
    unchecked: int  # whole by their footers, written before checksums existed
    damaged: list[tuple[str, str]]  # (tag, problem)


def verify(path: str | Path) -> VerifyReport:
    """Check every committed part of a run directory (footers, page CRCs, recorded SHA-256)."""
    store = RunStore(path)
    if store.manifest() is None:
        raise FileNotFoundError(f"{path} is not a layergrad run directory (no {MANIFEST})")
    tags = store.committed_tags()
    damaged = [(t, p) for t in tags if (p := store.part_problem(t)) is not None]
    bad = {t for t, _ in damaged}
    unchecked = sum(1 for t in tags if t not in bad and store.checksums(t) is None)
    return VerifyReport(len(tags), len(tags) - len(damaged), unchecked, damaged)


def _free_sibling(path: Path) -> Path:
    """``DIR-2``, ``DIR-3``, ...: the first that does not exist yet."""
    n = 2
    while path.with_name(f"{path.name}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}-{n}")


def _examples_schema(rows: list[dict]) -> pa.Schema:
    s = schema.EXAMPLES
    if rows and "ifd" in rows[0]:
        for f in schema.IFD_FIELDS:
            s = s.append(f)
    if rows and "step" in rows[0]:  # recorded during training (integrations.LayerGradCallback)
        for f in schema.TRAINING_FIELDS:
            s = s.append(f)
    return s


def _concat(tables: list[pa.Table], empty_schema: pa.Schema) -> pa.Table:
    if not tables:
        return empty_schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def _with_length_columns(examples: "pd.DataFrame") -> "pd.DataFrame":  # noqa: F821
    """The length-control columns (``schema.EXAMPLES``) on every row: a row written before they existed
    (or an imported one) was never cut, so its full length is its measured one and it has no cut."""
    examples = examples.copy()
    for column in ("truncate_at", "truncate_partner"):
        if column not in examples:
            examples[column] = None
    measured = examples["n_response_tokens"] if "n_response_tokens" in examples else None
    if "n_response_tokens_full" not in examples:
        examples["n_response_tokens_full"] = measured
    elif measured is not None:
        examples["n_response_tokens_full"] = examples["n_response_tokens_full"].where(
            examples["n_response_tokens_full"].notna(), measured)
    return examples


def load_results(path: str | Path) -> Results:
    """Read a run directory into DataFrames sorted by example order (then module order).

    The final store is the same whatever the number of processes or parts that wrote it.
    """
    store = RunStore(path)
    manifest = store.manifest()
    if manifest is None:
        raise FileNotFoundError(f"{path} is not a layergrad run directory (no {MANIFEST}); run `layergrad run --out {path}` first")
    ex, mod, cos = store.read_tables()
    examples = ex.to_pandas()
    examples = examples.drop_duplicates("id", keep="last").sort_values(["order", "id"], kind="stable").reset_index(drop=True)
    examples = _with_length_columns(examples)
    rank = dict(zip(examples["id"], range(len(examples))))
    modules = mod.to_pandas()
    module_order = {m: i for i, m in enumerate(manifest.get("module_names", []))}
    if len(modules):
        modules = modules[modules["id"].isin(rank)]
        modules = modules.assign(_o=modules["id"].map(rank), _m=modules["module"].map(module_order).fillna(1e9))
        modules = modules.sort_values(["_o", "_m", "module"], kind="stable").drop(columns=["_o", "_m"])
        modules = modules.drop_duplicates(["id", "module"], keep="last").reset_index(drop=True)
    cosine = cos.to_pandas()
    if len(cosine):
        cosine = cosine[cosine["id"].isin(rank)]
        cosine = cosine.assign(_o=cosine["id"].map(rank)).sort_values(["_o", "kind", "module_a"], kind="stable").drop(columns=["_o"]).reset_index(drop=True)
    return Results(manifest=manifest, examples=examples, modules=modules, cosine=cosine, path=Path(path))
