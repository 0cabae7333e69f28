"""The file suffixes that are read (and written) as data, and the files that mark a ``datasets`` folder."""
from __future__ import annotations

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
CSV_SUFFIXES = (".csv", ".tsv")
SUFFIXES = JSON_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES
WRITE_SUFFIXES = JSON_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES  # write_records' formats
SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")  # what datasets' save_to_disk writes
