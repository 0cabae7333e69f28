"""Instruction data: read Alpaca and chat records, validate them, give them stable ids.

Formats, chosen by the file's suffix, or by what a folder or a name is:

- ``.json``: one JSON array of record objects;
- ``.jsonl`` / ``.ndjson``: one record object per line (blank lines are ignored);
- ``.parquet``: one record per row;
- ``.csv`` / ``.tsv``: one record per row, read by pyarrow with every column as text (so ``42``
  stays the string ``"42"``, as in the JSON file it was written from; an empty cell is ``""``);
- a folder written by ``datasets``' ``save_to_disk`` (``state.json`` or ``dataset_dict.json``),
  read by ``datasets.load_from_disk``;
- any other folder: every data file in it and its subfolders, each read as above, what is skipped
  named with its reason (:mod:`.folders`); but a dataset repository folder (a ``README.md`` naming
  ``configs:``) and a hub dataset id ``org/name`` (or ``org/name@REV``) that is no local
  path are read by ``datasets.load_dataset`` (the Hugging Face cache, ``HF_HUB_OFFLINE`` and
  ``HF_TOKEN`` as there). :class:`DatasetOptions` holds the subset (config name), split and
  revision. With several splits and none asked for, ``train`` is taken when there is one.

Two kinds of record:

- Alpaca ``{"instruction", "input", "output"}`` (``input`` optional). The prompt is
  ``instruction``, plus ``"\\n" + input`` when ``input`` is not ``""`` (the paper's rule);
  the response is ``output``.
- chat ``{"messages": [{"role", "content"}, ...]}``. The response is the content of
  the last turn, which must be the assistant's; the turns before it are the prompt
  (``run --turns all`` scores every assistant turn: :mod:`layergrad.inputs.prompting`).
- plain text ``{"text"}`` (pretraining-style data), when the record has none of ``messages``,
  ``instruction`` and ``output``: every token is a response token; there is no prompt. A record
  with ``instruction``/``output`` is Alpaca even when it also has a ``text`` field (the hub's
  ``tatsu-lab/alpaca`` keeps its formatted prompt there).

A field whose value is ``null`` counts as absent. Parquet stores a field that some
records lack as ``null``, so this keeps a JSON file and its Parquet copy equivalent.

Every example gets a stable id: the record's own ``id`` (a string or an integer),
otherwise a hash of its content (see :func:`content_id`). Never the instruction
text: one instruction often appears with several responses.

Validation collects every problem in every file before anything is raised, so a
user fixes a file in one pass. ``skip_invalid`` skips invalid *records*; a file that
cannot be read at all (missing, not JSON, not a list, empty) is always an error.

The concepts live in submodules named after what they hold: :mod:`.formats` (suffixes), :mod:`.problems`
(``Problem``, ``DataError``), :mod:`.records` (``Example``, ``Fields``, parsing one record), :mod:`.ids`,
:mod:`.files` (the file readers), :mod:`.dataset_sources` (``datasets`` folders and hub ids), :mod:`.folders`
(a folder of data files: what it reads and skips), :mod:`.reading`
(one source, whatever it is), :mod:`.loading` (``load_examples``, ``validate``) and :mod:`.writing`. This
package re-exports their names, so ``from layergrad.inputs.data import load_examples`` keeps working.
"""
from __future__ import annotations

from layergrad.inputs.data.dataset_sources import DatasetOptions, is_dataset_source
from layergrad.inputs.data.folders import describe_data, is_data_folder
from layergrad.inputs.data.formats import (CSV_SUFFIXES, JSON_SUFFIXES, JSONL_SUFFIXES, PARQUET_SUFFIXES,
                                           SAVED_DATASET_FILES, SUFFIXES, WRITE_SUFFIXES)
from layergrad.inputs.data.ids import content_id
from layergrad.inputs.data.loading import load_examples, validate
from layergrad.inputs.data.problems import DataError, Problem
from layergrad.inputs.data.reading import dataset_digest, read_records
from layergrad.inputs.data.records import Example, Fields
from layergrad.inputs.data.writing import write_records

__all__ = [
    "DataError",
    "DatasetOptions",
    "Example",
    "Fields",
    "Problem",
    "content_id",
    "load_examples",
    "read_records",
    "validate",
    "write_records",
]
