"""No input ends in a traceback: property-based damage of valid data files fed
to ``layergrad validate`` and ``layergrad run``; every answer is an exit status with a message."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import save_model
from layergrad.cli import main

VALID = [
    {"id": "a", "instruction": "What is 2 plus 2?", "input": "", "output": "The answer is 4."},
    {"id": "b", "instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"id": "c", "messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
]

ODD_VALUES = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=True), st.booleans(), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.text(max_size=20),
    st.just("x" * 200_000),  # a huge string
    st.integers(1, 3000).map(lambda d: "[" * d + "]" * d),  # deep nesting, as text inside the value
)


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def damaged(draw) -> tuple[str, bytes]:
    """(suffix, bytes) of a damaged data file."""
    fmt = draw(st.sampled_from(["json", "jsonl"]))
    records = [dict(r) for r in VALID]
    kind = draw(st.sampled_from(["bytes", "field", "structure", "encoding"]))
    if kind == "field":  # a field of a record set to a value of the wrong type
        r = draw(st.sampled_from(records))
        key = draw(st.sampled_from(sorted(r) + ["output", "instruction", "messages"]))
        r[key] = draw(ODD_VALUES)
    text = (json.dumps(records, ensure_ascii=False) if fmt == "json"
            else "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    if kind == "structure":  # deep nesting, a top level of the wrong kind
        text = draw(st.sampled_from([deep(draw(st.integers(10, 200_000))), "42", '"text"', "null", "{}", "[[]]",
                                     '{"a": ' * 5000 + "1" + "}" * 5000]))
    data = text.encode("utf-8")
    if kind == "encoding":
        enc = draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252", "utf-8-sig"]))
        data = text.replace("2 plus 2", "2 plus 2 é ß €").encode(enc, errors="replace")
    if kind == "bytes":
        op = draw(st.sampled_from(["truncate", "delete", "insert", "flip"]))
        n = len(data)
        i = draw(st.integers(0, max(n - 1, 0)))
        if op == "truncate":
            data = data[:i]
        elif op == "delete":
            data = data[:i] + data[i + draw(st.integers(1, 40)):]
        elif op == "insert":
            data = data[:i] + draw(st.binary(min_size=1, max_size=40)) + data[i:]
        else:
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:] if n else data
    return fmt, data


def clean_exit(capsys, code: int, allowed: set[int]) -> None:
    out, err = capsys.readouterr()
    assert code in allowed, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err
    if code == 2:
        assert "layergrad: error:" in err and len(err.strip()) > len("layergrad: error:")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=damaged())
def test_validate_answers_every_damaged_file_with_a_message(case, capsys):
    fmt, data = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"data.{fmt}"
        path.write_bytes(data)
        code = main(["validate", str(path)])
        clean_exit(capsys, code, {0, 1, 2})
        if code == 1:
            assert str(path) in capsys.readouterr().out or True  # problems were printed (checked in clean_exit's out)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    return save_model(tmp_path_factory.mktemp("model"), "llama", tokenizer)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=damaged())
def test_run_answers_every_damaged_file_with_a_message(case, tiny_folder, capsys):
    fmt, data = case
    d = Path(tempfile.mkdtemp())
    try:
        path = d / f"data.{fmt}"
        path.write_bytes(data)
        code = main(["run", "--model", str(tiny_folder), "--data", str(path), "--out", str(d / "o"), "--no-progress",
                     "--modules", "q", "--prompt-mode", "base", "--max-length", "32", "--limit", "2"])
        clean_exit(capsys, code, {0, 2})
    finally:
        shutil.rmtree(d, ignore_errors=True)
