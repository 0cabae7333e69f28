"""The file suffixes that are read (and written) as data, and the files that mark a ``datasets`` folder."""
from __future__ import annotations

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
CSV_SUFFIXES = (".csv", ".tsv")
SUFFIXES = JSON_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES
WRITE_SUFFIXES = JSON_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES  # write_records' formats
SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")  # what datasets' save_to_disk writes

#: every accepted kind of data, as the command line's --help texts say it
DESCRIPTION = ("JSON (.json: an array of records), JSON lines (.jsonl, .ndjson), Parquet (.parquet), CSV/TSV (.csv, .tsv: "
               "a header row), a folder of such files (subfolders included; other files are named and skipped), a datasets "
               "folder (save_to_disk, or a dataset repo with configs in its README.md) or a hub dataset id org/name[@REV]; "
               "records: Alpaca (instruction, input, output), chat (messages) or plain text (text)")
