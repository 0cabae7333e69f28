"""``datasets`` sources: a folder written by ``save_to_disk``, a folder ``load_dataset`` reads, a hub dataset id;
:class:`DatasetOptions` selects the subset, split and revision."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from layergrad.inputs.data.files import _FileContent
from layergrad.inputs.data.formats import SUFFIXES


@dataclass(frozen=True)
class DatasetOptions:
    """What selects the records of a ``datasets`` dataset (a folder or a hub id); plain files ignore it."""

    split: str | None = None  # None: the only split, else "train"
    subset: str | None = None  # the config name (``load_dataset(path, name)``)
    revision: str | None = None  # hub datasets: branch, tag or commit


def is_dataset_source(path) -> bool:
    """Whether ``path`` is read by ``datasets`` (a folder, or a hub id that is no local path)."""
    p = Path(path)
    return p.is_dir() or (not p.exists() and _is_hub_name(str(path)))


def _is_hub_name(text: str) -> bool:
    import re

    if text.lower().endswith(SUFFIXES):  # data/typo.json is a missing file, not a hub id
        return False
    return not text.startswith((".", "/", "~")) and bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@.+)?", text))


def _pick_split(dd, source: str, split: str | None):
    """One split of a ``DatasetDict``, or ``(None, message)``."""
    from layergrad.vocab import did_you_mean

    names = list(dd)
    if split is None:
        if len(names) == 1:
            return dd[names[0]], None
        if "train" in names:
            return dd["train"], None
        return None, f"has splits {', '.join(names)}; choose one with --split"
    if split not in dd:
        hint = did_you_mean(split, names, template=" (did you mean {!r}?)")
        return None, f"has no split {split!r}{hint}; its splits: {', '.join(names)} (--split)"
    return dd[split], None


def _dataset_content(ds, source: str) -> _FileContent:
    items = ds.to_list()
    if not items:
        return _FileContent.failed(source, "no records (the dataset has no rows)")
    return _FileContent.of(items)


def _read_saved(path: Path, source: str, options: DatasetOptions) -> _FileContent:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged folder fails in json, arrow, fsspec...: all mean "cannot read"
        return _FileContent.failed(source, f"not a readable datasets folder (save_to_disk): {type(e).__name__}: {e}")
    if isinstance(ds, datasets.DatasetDict):
        ds, message = _pick_split(ds, source, options.split)
        if ds is None:
            return _FileContent.failed(source, message)
    elif options.split is not None and options.split != str(ds.split or options.split):
        return _FileContent.failed(source, f"is a single dataset (split {ds.split}), not split {options.split!r}; "
                                   "drop --split")
    return _dataset_content(ds, source)


def _read_dataset(source: str, options: DatasetOptions, *, hub: bool) -> _FileContent:
    """A hub dataset id, or a folder that ``datasets.load_dataset`` reads (data files, a README with configs)."""
    import datasets

    name, at, rev = source.partition("@") if hub else (source, "", "")
    revision = rev if at else options.revision
    what = "hub dataset" if hub else "dataset folder"
    if hub:
        from huggingface_hub import constants

        from layergrad.inputs.models.hub import hub_unreachable

        unreachable = hub_unreachable()  # at once, not after huggingface_hub's retries
        if unreachable is not None:
            return _FileContent.failed(source, (
                f"the hub cannot be reached ({unreachable}): check the network (and HF_ENDPOINT). If the dataset is in "
                f"the Hugging Face cache ({constants.HF_HUB_CACHE}), set HF_HUB_OFFLINE=1 to read it from there; on a "
                f"machine without network, download it elsewhere with `hf download {name} --repo-type dataset`, copy "
                "the cache here and set HF_HUB_OFFLINE=1"))
    try:
        ds = datasets.load_dataset(name, options.subset, split=options.split, revision=revision)
    except ValueError as e:  # an unknown subset or split: datasets' message lists the available ones
        text = " ".join(str(e).split())
        flag = "--split" if "split" in text.lower() else "--subset"
        return _FileContent.failed(source, f"{text} (choose with {flag})")
    except (ConnectionError, FileNotFoundError) as e:
        offline = " HF_HUB_OFFLINE is set: go online to download it, or load it once online so it is cached." \
            if hub and os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"} else ""
        return _FileContent.failed(source, f"could not load the {what}: {type(e).__name__}: {e}.{offline}")
    except Exception as e:  # noqa: BLE001 - hub, auth and parsing failures: the message is datasets'
        return _FileContent.failed(source, f"could not load the {what}: {type(e).__name__}: {e}")
    if isinstance(ds, datasets.DatasetDict):
        ds, message = _pick_split(ds, source, None)
        if ds is None:
            return _FileContent.failed(source, message)
    return _dataset_content(ds, source)
