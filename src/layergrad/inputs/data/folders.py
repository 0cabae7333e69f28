"""A folder given as data: every file of a supported format in it and in its subfolders, read one by one.

A folder is read as a folder of data files unless it is a ``datasets`` folder: one written by
``save_to_disk`` (``state.json`` / ``dataset_dict.json``, read by ``load_from_disk``) or a dataset repository
whose ``README.md`` names its ``configs:`` (read by ``load_dataset``, with ``--subset``/``--split``). In a
folder of data files:

- every ``.json``, ``.jsonl``/``.ndjson``, ``.parquet``, ``.csv``/``.tsv`` file is read, at any depth
  (subfolders count), in path order; a subfolder written by ``save_to_disk`` is read as one dataset;
- every other file is skipped, and so are hidden files and folders (a name starting with ``.``), each
  named with its reason by :func:`describe` (``validate`` prints it, ``run`` says it before it starts);
- the examples' group (without ``--group``) is the folder's name; each file is its own source, so a problem
  names the file, and ``--limit`` takes the first N examples of each file.
"""
from __future__ import annotations

import os
from pathlib import Path

from layergrad.inputs.data.formats import SAVED_DATASET_FILES, SUFFIXES


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``datasets``' ``save_to_disk``."""
    return any((path / name).is_file() for name in SAVED_DATASET_FILES)


def is_dataset_repo(path: Path) -> bool:
    """A dataset repository folder: a ``README.md`` whose YAML front matter names ``configs:``."""
    try:
        text = (path / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    if not text.startswith("---"):
        return False
    front = text[3:].split("\n---", 1)[0]
    return any(line.startswith("configs:") for line in front.splitlines())


def is_data_folder(path) -> bool:
    """A folder read file by file (see the module docstring), not by ``datasets``."""
    p = Path(path)
    return p.is_dir() and not is_saved_dataset(p) and not is_dataset_repo(p)


def folder_sources(path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(sources, skipped)`` of a data folder: the files (and ``save_to_disk`` subfolders) read, in path order,
    and every file or folder left out with its reason."""
    root = Path(path)
    sources: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for d in sorted(dirs):
            if d.startswith("."):
                skipped.append((here / d, "hidden folder"))
            elif is_saved_dataset(here / d):
                sources.append(here / d)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not is_saved_dataset(here / d))
        for name in sorted(files):
            f = here / name
            if name.startswith("."):
                skipped.append((f, "hidden file"))
            elif f.suffix.lower() in SUFFIXES:
                sources.append(f)
            else:
                skipped.append((f, f"not a data format ({f.suffix or 'no suffix'})"))
    return sorted(sources), sorted(skipped)


def describe(path) -> str:
    """One line saying what a data folder gives: the files read and the ones skipped, by name and reason."""
    root = Path(path)
    sources, skipped = folder_sources(root)
    rel = lambda p: str(p.relative_to(root)) + ("/" if p.is_dir() else "")  # noqa: E731
    line = (f"{path}: reading {len(sources)} data file{'s' if len(sources) != 1 else ''} (subfolders included): "
            + (", ".join(rel(p) for p in sources) or "none"))
    if skipped:
        line += f"; skipping {len(skipped)}: " + ", ".join(f"{rel(p)} ({why})" for p, why in skipped)
    return line


def describe_data(paths) -> list[str]:
    """:func:`describe` of every data folder among ``paths`` (files and hub ids say nothing)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return [describe(p) for p in paths if is_data_folder(p)]
