"""The examples a run selects from its data files: ``--limit``, the paper's index ratios, and the
fingerprint of what was selected (part of the run's identity)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from layergrad.inputs.data import DatasetOptions, Example, Fields, dataset_digest, is_dataset_source, load_examples
from layergrad.inputs.data.folders import folder_sources, is_data_folder


def dataset_options(cfg) -> DatasetOptions:
    """The split, subset and revision of a config's ``datasets`` sources."""
    return DatasetOptions(split=getattr(cfg, "split", None), subset=getattr(cfg, "subset", None),
                          revision=getattr(cfg, "data_revision", None))


def data_fingerprint(cfg) -> str:
    """A hash of the data files' names and bytes (a ``datasets`` source: its records) and of what
    selects examples from them."""
    h = hashlib.sha256()
    options = dataset_options(cfg)
    for p in cfg.data:
        h.update(str(Path(p).name).encode())
        for source in folder_sources(p)[0] if is_data_folder(p) else [Path(p)]:  # a data folder: each file it reads
            if source != Path(p):
                h.update(str(source.relative_to(p)).encode())
            if is_dataset_source(source):
                h.update(dataset_digest(source, options).encode())
                continue
            with open(source, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    selection = [cfg.group, cfg.fields, cfg.limit, cfg.record_slice]
    if options != DatasetOptions():  # only then, so runs stored before these options keep their fingerprint
        selection.append([options.split, options.subset, options.revision])
    h.update(json.dumps(selection, sort_keys=True).encode())
    return h.hexdigest()[:16]


def load_data(cfg) -> tuple[list[Example], list]:
    """``(examples, problems)`` of a :class:`~layergrad.config.RunConfig`'s data, after its selection."""
    fields = Fields(**cfg.fields) if cfg.fields else Fields()
    examples, problems = load_examples(cfg.data, group=cfg.group, fields=fields, skip_invalid=cfg.skip_invalid,
                                       dataset=dataset_options(cfg))
    if cfg.record_slice is not None:
        examples, problems = _slice_records(examples, problems, *cfg.record_slice)
    if cfg.limit is not None:
        per_file: dict[str, int] = {}
        kept = []
        for ex in examples:
            c = per_file.get(ex.source, 0)
            if c < cfg.limit:
                kept.append(ex)
            per_file[ex.source] = c + 1
        examples = kept
        problems = [p for p in problems if p.index is None or p.index < cfg.limit]
    return examples, problems


def _slice_records(examples, problems, start: float, end: float):
    """The paper's ``--start_idx_ratio`` / ``--end_idx_ratio``: a value above 1 is an index, else a ratio."""
    sizes: dict[str, int] = {}
    for ex in examples:
        sizes[ex.source] = max(sizes.get(ex.source, 0), ex.index + 1)
    for p in problems:
        if p.index is not None:
            sizes[p.source] = max(sizes.get(p.source, 0), p.index + 1)

    def bounds(src):
        n = sizes[src]
        lo = int(start) if start > 1 else int(n * start)
        e = 1 if end == -1 else end
        hi = int(e) if e > 1 else int(n * e)
        return lo, hi

    keep = lambda src, i: bounds(src)[0] <= i < bounds(src)[1]  # noqa: E731
    return [ex for ex in examples if keep(ex.source, ex.index)], [p for p in problems if p.index is None or keep(p.source, p.index)]
