"""Silent corruption is detected: flipped bytes inside a committed part whose
Parquet footer is intact are caught by the checksums recorded at commit, by every reader."""
from __future__ import annotations

import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import make_model
from layergrad.cli import main
from layergrad.run import engine
from layergrad.store import load_results
from layergrad.store.merge import check
from layergrad.store.run import UNREADABLE
from helpers import MANY, assert_same_runs, config, loaded


def flip_middle(path: Path, n: int = 256, at: float = 0.5) -> None:
    """Invert ``n`` bytes around fraction ``at`` of a file; the footer (its last bytes) is left intact."""
    data = bytearray(path.read_bytes())
    mid = int(len(data) * at) - n // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))
    pq.read_metadata(path)  # still a valid Parquet file by its footer


@pytest.fixture
def runs(tmp_path, tokenizer):
    model = make_model("llama", len(tokenizer))
    whole = config(tmp_path, MANY[:6], out="whole", batch_size=2, modules="attn")
    engine.run(whole, loaded=loaded(model, tokenizer))
    hurt = config(tmp_path, MANY[:6], out="hurt", batch_size=2, modules="attn")
    engine.run(hurt, loaded=loaded(model, tokenizer))
    return model, whole, hurt


def test_a_damaged_modules_part_is_refused_by_readers_and_recomputed_on_resume(runs, tokenizer, capsys):
    model, whole, hurt = runs
    parts = Path(hurt.out) / "parts"
    victim = parts / "modules-r0-000001.parquet"
    lost = set(pq.read_table(parts / "examples-r0-000001.parquet").column("id").to_pylist())
    flip_middle(victim)

    with pytest.warns(UserWarning, match="part r0-000001 .*modules-r0-000001.parquet is damaged"):
        res = load_results(hurt.out)  # never the damaged values
    assert not lost & set(res.examples["id"]) and not lost & set(res.modules["id"])

    assert main(["verify", hurt.out]) == 1
    out = capsys.readouterr().out
    assert "part r0-000001: modules-r0-000001.parquet is damaged" in out
    assert any("r0-000001" in n for n in check([hurt.out]).notes)  # merge checks the same

    s = engine.run(hurt, loaded=loaded(model, tokenizer))
    assert s.computed == len(lost)  # exactly the damaged part's examples
    assert any(p.name.startswith("modules-r0-000001.parquet") for p in (parts / UNREADABLE).iterdir())  # kept aside
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same_runs(load_results(whole.out), load_results(hurt.out))
    assert main(["verify", hurt.out]) == 0


def test_a_damaged_examples_part_is_caught_by_its_page_checksums(runs):
    _, _, hurt = runs
    parts = Path(hurt.out) / "parts"
    ex = parts / "examples-r0-000002.parquet"
    n_lost = pq.read_metadata(ex).num_rows
    flip_middle(ex, n=8, at=0.1)  # in the data pages, not the footer
    assert main(["verify", hurt.out]) == 1
    with pytest.warns(UserWarning, match="r0-000002"):
        res = load_results(hurt.out)
    assert len(res.examples) == 6 - n_lost


def test_verify_of_a_folder_that_is_not_a_run_exits_2(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    assert "not a layergrad run directory" in capsys.readouterr().err
