"""Reading, validating and writing instruction data (layergrad.inputs.data)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from layergrad.inputs.data import (
    DataError,
    Example,
    Fields,
    Problem,
    content_id,
    load_examples,
    read_records,
    validate,
    write_records,
)
from helpers import ALPACA, CHAT_PROBLEMS, FILE_PROBLEMS, RECORD_PROBLEMS, jsonl, write

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"







def sha16(record) -> str:
    text = json.dumps(record, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def assert_names(problem: Problem, path: Path, index: int | None, field: str | None):
    """The problem's message names the file, the record index and the field."""
    text = str(problem)
    assert path.name in text, text
    assert problem.source == str(path)
    assert problem.index == index, text
    assert problem.field == field, text
    if index is not None:
        assert f"record {index}" in text
    if field is not None:
        assert f"field {field!r}" in text


# ----------------------------------------------------------------------------- formats


def test_json_alpaca_prompt_response_and_bookkeeping(tmp_path):
    path = write(tmp_path / "math_set.json", ALPACA)
    examples, problems = load_examples(path)
    assert problems == []
    assert [e.prompt for e in examples] == [
        "Add 2 and 3.", "Translate to French.\ngood morning", "Name a colour."]
    assert [e.response for e in examples] == ["5", "bonjour", "blue"]
    assert [e.index for e in examples] == [0, 1, 2]
    assert {e.group for e in examples} == {"math_set"}
    assert {e.source for e in examples} == {str(path)}
    assert [e.record for e in examples] == ALPACA
    assert all(e.raw is None and e.messages is None and not e.is_chat for e in examples)


def test_prompt_rule_is_exactly_the_papers(tmp_path):
    # input is appended whenever it is not "", even if it is only whitespace; null is absent
    records = [{"instruction": "I", "input": " ", "output": "o"},
               {"instruction": "I", "input": None, "output": "o2"}]
    examples, _ = load_examples(write(tmp_path / "d.json", records))
    assert [e.prompt for e in examples] == ["I\n ", "I"]


def test_group_argument_overrides_the_file_stem(tmp_path):
    a = write(tmp_path / "a.json", ALPACA[:1])
    b = write(tmp_path / "b.json", ALPACA[1:])
    examples, _ = load_examples([a, b])
    assert [e.group for e in examples] == ["a", "b", "b"]
    examples, _ = load_examples([a, b], group="mine")
    assert {e.group for e in examples} == {"mine"}
    assert [(e.source, e.index) for e in examples] == [(str(a), 0), (str(b), 0), (str(b), 1)]


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_jsonl_skips_blank_lines_and_keeps_raw_lines(tmp_path, suffix):
    lines = ['{"instruction": "Say hi",   "output": "héllo"}',  # odd spacing, raw UTF-8
             '{"output":"2","instruction":"1+1"}',  # key order
             '{"instruction": "x", "output": "\\u00e9"}']  # an escape
    text = lines[0] + "\n\n   \n" + lines[1] + "\r\n" + lines[2]  # blank lines, CRLF, no final newline
    examples, problems = load_examples(write(tmp_path / f"d{suffix}", text))
    assert problems == []
    assert [e.index for e in examples] == [0, 1, 2]
    assert [e.response for e in examples] == ["héllo", "2", "é"]
    assert [e.raw for e in examples] == [lines[0], lines[1] + "\r", lines[2]]


def test_parquet_records_load_like_their_json_twins(tmp_path):
    pq.write_table(pa.Table.from_pylist(ALPACA), tmp_path / "d.parquet")  # record 2 gets input=null
    from_parquet, problems = load_examples(tmp_path / "d.parquet")
    from_json, _ = load_examples(write(tmp_path / "d.json", ALPACA))
    assert problems == []
    assert [e.prompt for e in from_parquet] == [e.prompt for e in from_json]
    assert [e.response for e in from_parquet] == [e.response for e in from_json]
    assert from_parquet[2].record["input"] is None
    assert [e.id for e in from_parquet] == [e.id for e in from_json]  # nulls don't change ids


def test_field_mapping(tmp_path):
    records = [{"uid": "q1", "question": "Why?", "context": "Because.", "answer": "So."}]
    fields = Fields(instruction="question", input="context", output="answer", id="uid")
    examples, _ = load_examples(write(tmp_path / "d.json", records), fields=fields)
    assert (examples[0].id, examples[0].prompt, examples[0].response) == ("q1", "Why?\nBecause.", "So.")

    # With the default names the same file is invalid, and the message says what it has.
    problems = validate(tmp_path / "d.json")
    assert [p.field for p in problems] == ["instruction", "output"]
    assert "'question'" in problems[0].message and "missing" in problems[0].message


def test_field_names_must_be_non_empty():
    with pytest.raises(ValueError, match="Fields.output"):
        Fields(output="")


def test_read_records_returns_records_and_raw_lines(tmp_path):
    records, raws = read_records(write(tmp_path / "d.json", ALPACA))
    assert records == ALPACA and raws == [None] * 3
    records, raws = read_records(write(tmp_path / "d.jsonl", jsonl(ALPACA)))
    assert records == ALPACA and raws == [json.dumps(r) for r in ALPACA]
    with pytest.raises(DataError, match="file not found"):
        read_records(tmp_path / "nope.json")


# ----------------------------------------------------------------------------- chat records


def test_chat_records_split_at_the_last_assistant_turn(tmp_path):
    turns = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "2+2?"},
             {"role": "assistant", "content": "4"},
             {"role": "user", "content": "and 3+3?", "name": "kid"},
             {"role": "assistant", "content": "6"}]
    examples, problems = load_examples(write(tmp_path / "chat.jsonl", jsonl([{"messages": turns}])))
    assert problems == []
    (e,) = examples
    assert e.is_chat and e.prompt is None and e.response == "6"
    assert e.messages == tuple({"role": t["role"], "content": t["content"]} for t in turns[:4])
    assert e.record == {"messages": turns}


def test_chat_and_alpaca_records_mix(tmp_path):
    records = [ALPACA[0], {"id": 7, "messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "hello"}]}]
    examples, _ = load_examples(write(tmp_path / "d.json", records))
    assert [e.is_chat for e in examples] == [False, True]
    assert examples[1].id == "7"




@pytest.mark.parametrize("record, field, fragment",
                         [c[1:] for c in CHAT_PROBLEMS], ids=[c[0] for c in CHAT_PROBLEMS])
def test_chat_problems(tmp_path, record, field, fragment):
    path = write(tmp_path / "chat.json", [ALPACA[0], record])
    (problem,) = validate(path)
    assert_names(problem, path, 1, field)
    assert fragment in problem.message


# ----------------------------------------------------------------------------- problem catalogue
# Each case: file name, file content, then (index, field, fragment of the message).



@pytest.mark.parametrize("content, index, field, fragment",
                         [c[1:] for c in RECORD_PROBLEMS], ids=[c[0] for c in RECORD_PROBLEMS])
def test_record_problems(tmp_path, content, index, field, fragment):
    path = write(tmp_path / "data.json", content)
    (problem,) = validate(path)
    assert_names(problem, path, index, field)
    assert fragment in problem.message




@pytest.mark.parametrize("name, content, fragment",
                         [c[1:] for c in FILE_PROBLEMS], ids=[c[0] for c in FILE_PROBLEMS])
def test_file_problems(tmp_path, name, content, fragment):
    path = write(tmp_path / name, content)
    (problem,) = validate(path)
    assert_names(problem, path, None, None)
    assert problem.is_file_level
    assert fragment in problem.message


def test_file_not_found_directory_and_repeated_path(tmp_path):
    missing = tmp_path / "missing.json"
    (tmp_path / "folder.json").mkdir()
    good = write(tmp_path / "good.json", ALPACA)
    problems = validate([missing, tmp_path / "folder.json", good, str(good)])
    assert [p.message for p in problems] == [
        "file not found", "a folder with no data file (.json, .jsonl, .ndjson, .parquet, .csv, .tsv) in it or its "
        "subfolders; it holds: nothing", "given more than once"]
    assert [p.source for p in problems] == [str(missing), str(tmp_path / "folder.json"), str(good)]
    assert str(problems[0]) == f"{missing}: file not found"


def test_empty_and_broken_parquet(tmp_path):
    pq.write_table(pa.table({"instruction": pa.array([], pa.string()),
                             "output": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    write(tmp_path / "broken.parquet", b"not parquet at all")
    problems = validate([tmp_path / "empty.parquet", tmp_path / "broken.parquet"])
    assert "no records" in problems[0].message
    assert "not a readable Parquet file" in problems[1].message
    assert all(p.is_file_level for p in problems)


def test_jsonl_line_problems_name_the_line_and_spare_the_other_lines(tmp_path):
    lines = [json.dumps(ALPACA[0]), "", "[1, 2]", "{not json", json.dumps({"instruction": "x", "output": ""}),
             json.dumps(ALPACA[1])]
    path = write(tmp_path / "data.jsonl", "\n".join(lines) + "\n")
    problems = validate(path)
    assert [(p.index, p.line, p.field) for p in problems] == [
        (1, 3, None), (2, 4, None), (3, 5, "output")]
    assert "line is a list" in problems[0].message
    assert "not valid JSON at column 2" in problems[1].message
    assert str(problems[0]).startswith(f"{path}: record 1 (line 3): ")
    assert str(problems[2]) == f"{path}: record 3 (line 5), field 'output': " \
                               "must be a non-empty string (the response is empty)"
    examples, _ = load_examples(path, skip_invalid=True)
    assert [e.index for e in examples] == [0, 4]


def test_jsonl_invalid_utf8_names_the_file_byte_offset(tmp_path):
    first = json.dumps(ALPACA[0]).encode() + b"\n"
    path = write(tmp_path / "data.jsonl", first + b'{"instruction": "\xff", "output": "x"}\n')
    (problem,) = validate(path)
    assert (problem.index, problem.line) == (1, 2)
    assert f"invalid UTF-8 at byte offset {len(first) + 17}" in problem.message


def test_duplicate_ids_name_both_records(tmp_path):
    records = [{"id": "a", **ALPACA[0]}, {"id": "b", **ALPACA[1]}, {"id": "a", **ALPACA[2]}]
    path = write(tmp_path / "data.json", records)
    (problem,) = validate(path)
    assert_names(problem, path, 2, "id")
    assert "duplicate id 'a'" in problem.message and "record 0" in problem.message


def test_duplicate_ids_across_files_name_the_other_file(tmp_path):
    a = write(tmp_path / "a.json", [{"id": 1, **ALPACA[0]}])
    b = write(tmp_path / "b.jsonl", jsonl([{"id": "2", **ALPACA[1]}, {"id": "1", **ALPACA[2]}]))
    (problem,) = validate([a, b])
    assert_names(problem, b, 1, "id")
    assert f"also record 0 of {a}" in problem.message  # int 1 and str "1" are the same id


def test_every_problem_of_a_record_is_reported(tmp_path):
    path = write(tmp_path / "data.json", [{"instruction": 1, "input": 2, "output": " "}])
    assert {p.field for p in validate(path)} == {"instruction", "input"}
    path = write(tmp_path / "data.json", [{"instruction": "x", "input": 2, "output": " "}])
    assert {p.field for p in validate(path)} == {"output", "input"}


# ----------------------------------------------------------------------------- errors and skipping


def test_data_error_lists_every_problem_then_what_to_do(tmp_path):
    a = write(tmp_path / "a.json", [ALPACA[0], {"instruction": "x"}, {"output": "y"}])
    b = write(tmp_path / "b.json", [{"instruction": "x", "output": ""}])
    with pytest.raises(DataError) as info:
        load_examples([a, b])
    error = info.value
    assert isinstance(error, ValueError)
    assert [(Path(p.source).name, p.index, p.field) for p in error.problems] == [
        ("a.json", 1, "output"), ("a.json", 2, "instruction"), ("b.json", 0, "output")]
    lines = str(error).splitlines()
    assert lines[0] == "3 problems in the input data:"
    assert lines[1:4] == [f"  {p}" for p in error.problems]
    assert "--skip-invalid" in lines[-1]


def test_skip_invalid_returns_the_valid_examples_and_the_problems(tmp_path):
    records = [ALPACA[0], {"instruction": "x", "output": ""}, ALPACA[1], 42]
    path = write(tmp_path / "data.json", records)
    examples, problems = load_examples(path, skip_invalid=True)
    assert [e.index for e in examples] == [0, 2]
    assert [(p.index, p.field) for p in problems] == [(1, "output"), (3, None)]


def test_skip_invalid_never_skips_an_unreadable_file(tmp_path):
    good = write(tmp_path / "good.json", ALPACA)
    with pytest.raises(DataError) as info:
        load_examples([good, tmp_path / "typo.json"], skip_invalid=True)
    assert "typo.json: file not found" in str(info.value)
    assert "not files that cannot be read" in str(info.value).splitlines()[-1]


def test_skip_invalid_with_nothing_valid_left_raises(tmp_path):
    path = write(tmp_path / "data.json", [{"instruction": "x", "output": ""}])
    with pytest.raises(DataError, match="No valid records remain"):
        load_examples(path, skip_invalid=True)


def test_validate_never_raises_and_is_empty_for_good_data(tmp_path):
    assert validate(write(tmp_path / "good.json", ALPACA)) == []
    assert len(validate([tmp_path / "x.json", tmp_path / "y.jsonl"])) == 2


# ----------------------------------------------------------------------------- ids


def test_explicit_ids_become_strings(tmp_path):
    records = [{"id": 12, **ALPACA[0]}, {"id": "q-7", **ALPACA[1]}]
    examples, _ = load_examples(write(tmp_path / "d.json", records))
    assert [e.id for e in examples] == ["12", "q-7"]


def test_content_ids_are_sha256_of_canonical_json(tmp_path):
    examples, _ = load_examples(write(tmp_path / "d.json", ALPACA))
    assert [e.id for e in examples] == [sha16(r) for r in ALPACA]
    assert content_id({"b": 1, "a": "é"}) == sha16({"a": "é", "b": 1})  # key order, raw UTF-8


def test_content_ids_are_stable_across_formats_order_and_runs(tmp_path):
    by_json = {e.record["output"]: e.id for e in load_examples(write(tmp_path / "a.json", ALPACA))[0]}
    shuffled = [ALPACA[2], ALPACA[0], ALPACA[1]]
    by_jsonl = {e.record["output"]: e.id for e in load_examples(write(tmp_path / "b.jsonl", jsonl(shuffled)))[0]}
    assert by_json == by_jsonl


def test_identical_records_get_numbered_suffixes(tmp_path):
    same = {"instruction": "Q", "output": "A"}
    other = {"instruction": "Q", "output": "B"}  # same instruction, other response: other id
    examples, problems = load_examples(write(tmp_path / "d.json", [same, other, same, same]))
    base = sha16(same)
    assert problems == []
    assert [e.id for e in examples] == [base, sha16(other), f"{base}-1", f"{base}-2"]


def test_identical_records_across_files_stay_distinct(tmp_path):
    a = write(tmp_path / "a.json", [ALPACA[0]])
    b = write(tmp_path / "b.json", [ALPACA[0]])
    examples, _ = load_examples([a, b])
    assert [e.id for e in examples] == [sha16(ALPACA[0]), sha16(ALPACA[0]) + "-1"]


def test_content_ids_avoid_explicit_ids(tmp_path):
    base = sha16(ALPACA[0])
    records = [ALPACA[0], {"id": base, **ALPACA[1]}]  # an explicit id equal to record 0's hash
    examples, problems = load_examples(write(tmp_path / "d.json", records))
    assert problems == []
    assert [e.id for e in examples] == [f"{base}-1", base]


def test_examples_are_hashable_and_compare_without_the_record():
    a = Example("x", 0, "f.json", "f", "p", "r", record={"k": 1})
    b = Example("x", 0, "f.json", "f", "p", "r", record={"k": 2})
    assert a == b and len({a, b}) == 1


# ----------------------------------------------------------------------------- writing back


def test_write_jsonl_is_byte_for_byte(tmp_path):
    lines = ['{"instruction": "Say hi",   "output": "héllo", "extra": [1, 2.50]}',
             '  {"output":"2","instruction":"1+1"}  \r',  # surrounding spaces, a CRLF ending
             '{"instruction": "x", "output": "\\u00e9\\n"}']
    original = ("\n".join(lines) + "\n").encode("utf-8")
    src = write(tmp_path / "in.jsonl", original)
    examples, _ = load_examples(src)
    assert write_records(examples, tmp_path / "all.jsonl").read_bytes() == original
    write_records([examples[2], examples[0]], tmp_path / "some.jsonl")
    assert (tmp_path / "some.jsonl").read_bytes() == (lines[2] + "\n" + lines[0] + "\n").encode("utf-8")


def test_write_json_keeps_the_records(tmp_path):
    records = [{"instruction": "Café?", "input": "", "output": "Oui", "meta": {"n": [1, None]}}, *ALPACA]
    examples, _ = load_examples(write(tmp_path / "in.json", records))
    out = write_records(examples[:2], tmp_path / "out" / "sel.json")
    text = out.read_text(encoding="utf-8")
    assert json.loads(text) == records[:2]
    assert "Café" in text and '\n "instruction"' not in text and '\n  "instruction"' in text  # indent=1
    again, _ = load_examples(out)
    assert [e.id for e in again] == [e.id for e in examples[:2]]


def test_write_parquet_round_trip(tmp_path):
    examples, _ = load_examples(write(tmp_path / "in.json", ALPACA))
    out = write_records(examples, tmp_path / "out.parquet")
    again, _ = load_examples(out)
    assert [(e.id, e.prompt, e.response) for e in again] == [(e.id, e.prompt, e.response) for e in examples]


def test_write_across_formats_and_refuse_unknown_suffix(tmp_path):
    examples, _ = load_examples(write(tmp_path / "in.json", ALPACA))
    out = write_records(examples, tmp_path / "out.jsonl")
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == ALPACA
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        write_records(examples, tmp_path / "out.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json", "out.jsonl"]  # no temp files


# ----------------------------------------------------------------------------- the real data


@pytest.mark.skipif(not (SHARED_DATA / "cot_500").is_dir(),
                    reason=f"real data not found at {SHARED_DATA / 'cot_500'}")
def test_real_cot_500_files_load_with_unique_ids():
    path = SHARED_DATA / "cot_500" / "gsm8k_train_with_cot.json"
    examples, problems = load_examples(path)
    assert problems == [] and len(examples) == 500
    assert len({e.id for e in examples}) == 500
    assert {e.group for e in examples} == {"gsm8k_train_with_cot"}
    assert all(e.prompt == e.record["instruction"] for e in examples)  # input is empty here
    # strategyqa has one record twice: it keeps both, with distinct ids.
    dup, _ = load_examples(SHARED_DATA / "cot_500" / "strategyqa_train_no_cot.json")
    assert len(dup) == 500 and len({e.id for e in dup}) == 500
    assert sum(e.id.endswith("-1") for e in dup) == 1
