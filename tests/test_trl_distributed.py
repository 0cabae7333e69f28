"""LayerGradCallback under torchrun (DDP, 2 processes on the CPU, gloo): every rank records its own examples; the
merged store equals one process on the same examples at the same step; the training is unchanged."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import part_ids
from layergrad.store import load_results

pytest.importorskip("transformers")
HERE = Path(__file__).resolve().parent
METRICS = ["nuclear", "spectral", "frobenius", "top1_share", "effective_rank", "stable_rank"]


def launch(out: Path, *, ranks: int, batch: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    script = str(HERE / "torchrun_callback.py")
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", script] if ranks > 1
           else [sys.executable, script]) + [str(out), str(batch)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.timeout(300)
def test_torchrun_ddp_equals_one_process(tmp_path):
    launch(tmp_path / "ddp", ranks=2, batch=2)
    launch(tmp_path / "one", ranks=1, batch=4)
    for r in (0, 1):
        assert json.loads((tmp_path / "ddp" / f"losses-r{r}.json").read_text())["bitwise_unchanged"]
    assert json.loads((tmp_path / "one" / "losses-r0.json").read_text())["bitwise_unchanged"]
    ddp, one = load_results(tmp_path / "ddp" / "rec"), load_results(tmp_path / "one" / "rec")
    # each rank wrote its own parts; together they hold the single process's examples, step by step
    tags = part_ids(tmp_path / "ddp" / "rec")
    assert {t.split("-")[0] for t in tags} == {"r0", "r1"} and all(len(ids) == 2 for ids in tags.values())
    key = ["step", "example_id"]
    a = ddp.examples.set_index(key).sort_index()
    b = one.examples.set_index(key).sort_index()
    assert list(a.index) == list(b.index) and len(a) == 8 and set(a.index.get_level_values(0)) == {0, 2}
    np.testing.assert_allclose(a["loss"].to_numpy(float), b["loss"].to_numpy(float), rtol=1e-9)
    assert (a["n_response_tokens"] == b["n_response_tokens"]).all()
    ma = ddp.modules.merge(ddp.examples[["id", *key]], on="id").set_index([*key, "module"]).sort_index()
    mb = one.modules.merge(one.examples[["id", *key]], on="id").set_index([*key, "module"]).sort_index()
    assert list(ma.index) == list(mb.index) and len(ma) > 0
    s1 = mb["spectral"].to_numpy(float)
    for m in METRICS:
        np.testing.assert_allclose(ma[m].to_numpy(float), mb[m].to_numpy(float), rtol=1e-6, atol=0, err_msg=m)
    for sa, sb, s in zip(ma["spectrum"], mb["spectrum"], s1):
        np.testing.assert_allclose(np.asarray(sa), np.asarray(sb), rtol=0, atol=1e-6 * s)
    # the losses, unchanged by the callback (bitwise above): each rank's is its label tokens' sum over the number of
    # label tokens on both ranks (average_tokens_across_devices), so rank 0's + rank 1's = the single process's
    r0, r1, single = (json.loads((tmp_path / d / f"losses-r{r}.json").read_text())["losses"] for d, r in (("ddp", 0), ("ddp", 1), ("one", 0)))
    np.testing.assert_allclose(np.add(r0, r1), single, rtol=1e-9)
    # the live summaries are reduced over the ranks: rank 0 logs the single process's means
    live = {r: json.loads((tmp_path / "ddp" / f"losses-r{r}.json").read_text())["live"] for r in (0, 1)}
    alone = json.loads((tmp_path / "one" / "losses-r0.json").read_text())["live"]
    assert [e["step"] for e in alone] == [1, 3] and live[0] == live[1]
    for got, want in zip(live[0], alone, strict=True):
        assert got.keys() == want.keys() and got["layergrad/examples"] == want["layergrad/examples"] == 4
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-6), k
