"""A run directory: manifest + committed parts; resume by example id.

Layout::

    DIR/manifest.json                 # configuration of the run (see RunStore.open)
    DIR/parts/modules-<tag>.parquet   # written first
    DIR/parts/cosine-<tag>.parquet    # optional, written second
    DIR/parts/examples-<tag>.parquet  # written last: the commit marker of the part

``<tag>`` is ``<writer>-<seq>`` where ``writer`` names the process (``r0`` for a single
process, ``r<rank>`` under torchrun, ``s<i>of<n>`` for ``--shard``), so concurrent writers never
collide and a part's rows are never split across files.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from . import schema
from .parts import clean_temporaries, read_part, write_atomic, write_text_atomic

MANIFEST = "manifest.json"
PARTS = "parts"

#: Manifest keys that must match for a run directory to be resumed.
IDENTITY_KEYS = (
    "model_fingerprint",
    "prompt_mode",
    "max_length",
    "modules",
    "data_fingerprint",
    "dtype",
    "stats_dtype",
    "spectrum_k",
    "elementwise",
    "loss_rule",
)

_TAG = re.compile(r"^(examples|modules|cosine)-(.+)\.parquet$")


class ConfigMismatch(ValueError):
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

    # ---- manifest -------------------------------------------------------------------------
    def manifest(self) -> dict | None:
        p = self.path / MANIFEST
        if not p.exists():
            return None
        return json.loads(p.read_text(encoding="utf-8"))

    def open(self, manifest: dict) -> None:
        """Create the directory with ``manifest``, or check it matches an existing one.

        Raises :class:`ConfigMismatch` naming every differing key; nothing is written then.
        """
        self.parts.mkdir(parents=True, exist_ok=True)
        old = self.manifest()
        if old is None:
            write_text_atomic(json.dumps(manifest, indent=2, sort_keys=True), self.path / MANIFEST)
            return
        diffs = [
            f"  {k}: stored {old.get(k)!r}, now {manifest.get(k)!r}"
            for k in IDENTITY_KEYS
            if old.get(k) != manifest.get(k)
        ]
        if diffs:
            raise ConfigMismatch(
                f"{self.path} holds a run with a different configuration:\n"
                + "\n".join(diffs)
                + "\nUse another --out directory for the new configuration (results here are kept)."
            )
        clean_temporaries(self.parts)

    # ---- parts ----------------------------------------------------------------------------
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
        """Ids of examples already stored (any status) in committed parts."""
        ids: set[str] = set()
        for tag in self._committed_tags():
            t = read_part(self.parts / f"examples-{tag}.parquet")
            if t is not None:
                ids.update(t.column("id").to_pylist())
        return ids

    def _next_seq(self) -> int:
        if self._seq is None:
            prefix = f"{self.writer}-"
            seqs = [int(t[len(prefix):]) for t in self._committed_tags() if t.startswith(prefix) and t[len(prefix):].isdigit()]
            self._seq = max(seqs, default=-1) + 1
        seq = self._seq
        self._seq += 1
        return seq

    def write_part(self, examples: list[dict], modules: list[dict], cosine: list[dict] | None = None) -> str:
        """Commit one part: modules (and cosine) first, the examples part last."""
        if not examples:
            return ""
        tag = f"{self.writer}-{self._next_seq():06d}"
        ex_schema = _examples_schema(examples)
        write_atomic(pa.Table.from_pylist(modules, schema=schema.MODULES), self.parts / f"modules-{tag}.parquet")
        if cosine:
            write_atomic(pa.Table.from_pylist(cosine, schema=schema.COSINE), self.parts / f"cosine-{tag}.parquet")
        write_atomic(pa.Table.from_pylist(examples, schema=ex_schema), self.parts / f"examples-{tag}.parquet")
        return tag

    def remove_orphans(self) -> list[Path]:
        """Delete module/cosine parts whose examples part was never committed (a crash)."""
        committed = set(self._committed_tags())
        removed = []
        if not self.parts.exists():
            return removed
        for p in self.parts.iterdir():
            m = _TAG.match(p.name)
            if m and m.group(1) != "examples" and m.group(2) not in committed:
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed

    # ---- reading --------------------------------------------------------------------------
    def read_tables(self) -> tuple[pa.Table, pa.Table, pa.Table]:
        """Committed rows as Arrow tables, in part order (not yet sorted)."""
        ex, mod, cos = [], [], []
        for tag in self._committed_tags():
            e = read_part(self.parts / f"examples-{tag}.parquet")
            if e is None:
                continue
            m = read_part(self.parts / f"modules-{tag}.parquet")
            c = read_part(self.parts / f"cosine-{tag}.parquet") if (self.parts / f"cosine-{tag}.parquet").exists() else None
            ex.append(e)
            if m is not None:
                mod.append(m)
            if c is not None:
                cos.append(c)
        return (
            _concat(ex, schema.EXAMPLES),
            _concat(mod, schema.MODULES),
            _concat(cos, schema.COSINE),
        )


def _examples_schema(rows: list[dict]) -> pa.Schema:
    s = schema.EXAMPLES
    if rows and "ifd" in rows[0]:
        for f in schema.IFD_FIELDS:
            s = s.append(f)
    return s


def _concat(tables: list[pa.Table], empty_schema: pa.Schema) -> pa.Table:
    if not tables:
        return empty_schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


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
