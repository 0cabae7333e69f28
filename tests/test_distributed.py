"""Many processes under torchrun (gloo, CPU) give the store of one process, value for value.

Every child process gets OMP_NUM_THREADS=1 and the single-process reference runs with one
thread too: a batch is then computed bit for bit the same whichever process runs it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import save_model, write_json
from layergrad.run import distributed
from layergrad.cli import main
from layergrad.run.distributed import DistributedError, World
from layergrad.store import ConfigMismatch, RunStore, load_results
from helpers import assert_identical_results, part_ids, study_records

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


# ---------------------------------------------------------------------------------------
# helpers shared with test_merge.py
# ---------------------------------------------------------------------------------------








def one_thread_main(argv: list[str]) -> int:
    """``layergrad`` in this process, with one intra-op thread like each torchrun child."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(before)


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun(argv: list[str], nproc: int = 2, entry: list[str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += entry if entry is not None else ["-m", "layergrad"]
    return subprocess.run(cmd + argv, capture_output=True, text=True, env=child_env(), timeout=timeout)




# ---------------------------------------------------------------------------------------
# the launcher's environment
# ---------------------------------------------------------------------------------------


def test_plain_process_is_not_distributed():
    assert distributed.detect({}) is None
    assert distributed.shard_of(None, (1, 4)) == (1, 4)


def test_torchrun_environment_gives_rank_shard_and_writer():
    w = distributed.detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert w == World(rank=3, size=4, local_rank=1, local_size=2)
    assert w.writer == "r3" and not w.is_main
    assert distributed.shard_of(w, None) == (3, 4)


@pytest.mark.parametrize(
    "env, words",
    [
        ({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}, ["RANK=4", "WORLD_SIZE=4"]),
        ({"RANK": "1", "WORLD_SIZE": "2"}, ["LOCAL_RANK is not set"]),
        ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, ["RANK='x'"]),
    ],
    ids=["rank-too-large", "no-local-rank", "not-a-number"],
)
def test_broken_launcher_environment_is_named(env, words):
    with pytest.raises(DistributedError) as e:
        distributed.detect(env)
    for w in words:
        assert w in str(e.value)


def test_shard_flag_under_torchrun_is_refused():
    with pytest.raises(DistributedError, match="drop --shard"):
        distributed.shard_of(World(0, 2, 0, 2), (0, 2))


def test_backend_nccl_on_cuda_gloo_on_cpu():
    assert distributed.backend_for("cuda:1") == "nccl"
    assert distributed.backend_for("cpu") == "gloo"


# ---------------------------------------------------------------------------------------
# devices: one per rank, or a group per rank for --device-map auto (no GPU here: the plan only)
# ---------------------------------------------------------------------------------------


def test_one_gpu_per_rank_by_local_rank():
    w = World(rank=5, size=8, local_rank=1, local_size=4)
    assert distributed.local_device(w, "cuda", environ={}) == "cuda:1"
    assert distributed.local_device(w, "cpu", environ={}) == "cpu"
    assert distributed.local_device(w, "cuda:3", environ={}) == "cuda:3"  # explicit: kept


def test_device_groups_split_the_visible_gpus_in_order():
    env = {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "3", "CUDA_VISIBLE_DEVICES": "2,3,4,5,6,7",
           "LAYERGRAD_DEVICES_PER_RANK": "2"}
    assert distributed.assign_device_group(env) == "4,5"
    assert env["CUDA_VISIBLE_DEVICES"] == "4,5"
    # the rank computes on the first of its own devices; accelerate spreads the model over both
    assert distributed.local_device(World(1, 3, 1, 3), "cuda", environ=env) == "cuda:0"
    # without CUDA_VISIBLE_DEVICES: device indices
    assert distributed.device_group(3, 2, 4, None) == ["6", "7"]
    # not asked for, or not under a launcher: nothing changes
    assert distributed.assign_device_group({"LOCAL_RANK": "0"}) is None
    assert distributed.assign_device_group({"LAYERGRAD_DEVICES_PER_RANK": "2"}) is None


def test_device_map_with_ranks_sharing_gpus_is_refused():
    w = World(0, 2, 0, 2)
    with pytest.raises(DistributedError, match="LAYERGRAD_DEVICES_PER_RANK=K torchrun"):
        distributed.local_device(w, "cuda", device_map="auto", environ={})
    grouped = {"LAYERGRAD_DEVICE_GROUP": "0,1"}
    assert distributed.local_device(w, "cuda", device_map="auto", environ=grouped) == "cuda:0"
    assert distributed.local_device(w, "cpu", device_map="auto", environ={}) == "cpu"


def test_too_few_gpus_for_the_groups_is_named():
    with pytest.raises(DistributedError, match="needs 8 GPUs, but CUDA_VISIBLE_DEVICES lists 4"):
        distributed.device_group(0, 2, 4, ["0", "1", "2", "3"])


# ---------------------------------------------------------------------------------------
# concurrent writers in one directory
# ---------------------------------------------------------------------------------------


def test_a_writer_never_removes_another_writers_part_in_progress(tmp_path):
    import pyarrow.parquet as pq

    from layergrad.store import schema

    a = RunStore(tmp_path, writer="s0of2")
    a.open({"schema_version": 1})
    # writer s1of2 is between its modules part and its examples part, with a temporary file open
    b_modules = a.parts / "modules-s1of2-000000.parquet"
    pq.write_table(schema.MODULES.empty_table(), b_modules)
    b_tmp = a.parts / "examples-s1of2-000000.parquet.4242.tmp"
    b_tmp.write_bytes(b"half")
    own_orphan = a.parts / "modules-s0of2-000003.parquet"
    pq.write_table(schema.MODULES.empty_table(), own_orphan)
    own_tmp = a.parts / "examples-s0of2-000003.parquet.99.tmp"
    own_tmp.write_bytes(b"half")

    a.close()  # its writer lock: a second copy of writer s0of2 is refused while the first holds it
    RunStore(tmp_path, writer="s0of2").open({"schema_version": 1}, lock=False)
    assert a.remove_orphans() == [own_orphan]
    assert not own_tmp.exists()
    assert b_modules.exists() and b_tmp.exists()  # left to their writer
    b = RunStore(tmp_path, writer="s1of2")
    b.open({"schema_version": 1})
    assert b.remove_orphans() == [b_modules] and not b_tmp.exists()


# ---------------------------------------------------------------------------------------
# the process group (in this process: a world of one)
# ---------------------------------------------------------------------------------------


@pytest.fixture
def world_of_one(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    yield distributed.detect()
    distributed.shutdown()


def test_world_of_one_runs_many_jobs_as_rank_zero_in_one_group(tmp_path, tokenizer, world_of_one):
    import torch.distributed as dist

    folder = save_model(tmp_path, "llama", tokenizer)
    data = write_json(tmp_path / "d.json", study_records(3, awkward=False))
    for out in ("a", "b"):  # like `layergrad experiment`: several runs in one process, one group
        argv = ["run", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / out), "--no-progress", "--batch-size", "2"]
        assert main(argv) == 0
        assert dist.is_initialized()  # kept for the next run
        assert {t.rsplit("-", 1)[0] for t in part_ids(tmp_path / out)} == {"r0"}
        assert load_results(tmp_path / out).examples["status"].tolist() == ["ok"] * 3
    distributed.shutdown()
    assert not dist.is_initialized()


def test_rank_zero_manifest_error_stops_every_rank_with_its_message(tmp_path, world_of_one):
    store = RunStore(tmp_path / "o", writer="r0")
    store.open({"model_fingerprint": "a"})
    assert distributed.ensure_process_group(world_of_one, "cpu")
    with pytest.raises(ConfigMismatch, match="model_fingerprint: stored 'a', now 'b'"):
        distributed.open_store(store, {"model_fingerprint": "b"}, world_of_one)
    distributed.barrier()


# ---------------------------------------------------------------------------------------
# torchrun, 2 processes, gloo
# ---------------------------------------------------------------------------------------


def test_torchrun_two_ranks_equal_one_process_value_for_value(tmp_path, tokenizer):
    folder = save_model(tmp_path, "llama", tokenizer)
    data = write_json(tmp_path / "d.json", study_records())  # 7 examples to compute, 1 invalid, 1 skipped
    common = ["run", "--model", str(folder), "--data", str(data), "--batch-size", "2", "--max-length", "128",
              "--cosine", "--skip-invalid", "--no-progress"]

    r = torchrun(common + ["--out", str(tmp_path / "ranks")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert one_thread_main(common + ["--out", str(tmp_path / "single")]) == 0

    got, want = load_results(tmp_path / "ranks"), load_results(tmp_path / "single")
    assert sorted(want.examples["status"]) == ["invalid", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "skipped"]
    assert_identical_results(got, want)
    # both ranks computed, disjoint shares, 3 + 4 examples; rows needing no compute came from rank 0 only
    by_writer: dict[str, list[str]] = {}
    for tag, ids in part_ids(tmp_path / "ranks").items():
        by_writer.setdefault(tag.rsplit("-", 1)[0], []).extend(ids)
    assert set(by_writer) == {"r0", "r1"}
    assert not set(by_writer["r0"]) & set(by_writer["r1"])
    stat = dict(zip(got.examples["id"], got.examples["status"]))
    assert sorted(sum(stat[i] == "ok" for i in ids) for ids in by_writer.values()) == [3, 4]
    assert all(stat[i] == "ok" for i in by_writer["r1"])
    # only rank 0 reports the whole store
    assert "9 examples (1 invalid, 7 ok, 1 skipped)" in r.stdout and "[rank 1/2] computed" in r.stdout


DIE_AFTER_ONE_PART = textwrap.dedent(
    """
    # torchrun entry for the test: rank 1 is SIGKILLed while committing its second part
    # (its modules part is written, its examples part is not), then layergrad runs as usual.
    import os, signal, sys
    import layergrad.store.run as run

    if os.environ.get("RANK") == "1":
        real, seen = run.write_atomic, []

        def write_atomic(table, path):
            if path.name.startswith("examples-r1-"):
                seen.append(path)
                if len(seen) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(table, path)

        run.write_atomic = write_atomic

    from layergrad.cli import main
    sys.exit(main())
    """
)


def test_rank_killed_mid_run_then_rerun_gives_identical_results(tmp_path, tokenizer):
    """Drop-in mode (the paper's flags): the rerun also writes the reference JSON lines on rank 0."""
    folder = save_model(tmp_path, "llama", tokenizer)
    data = write_json(tmp_path / "d.json", study_records(awkward=False))
    die = tmp_path / "die_after_one_part.py"
    die.write_text(DIE_AFTER_ONE_PART)

    def argv(save):
        return ["run", "--data_path", str(data), "--save_path", str(save), "--model_name_or_path", str(folder),
                "--max_length", "128", "--batch-size", "1", "--no-progress"]

    save = tmp_path / "ranks.jsonl"
    store = tmp_path / "ranks.jsonl.layergrad"
    r = torchrun(argv(save), entry=[str(die)])
    assert r.returncode != 0
    assert not save.exists()
    parts = part_ids(store)
    assert [t for t in parts if t.startswith("r1-")] == ["r1-000000"]  # one part committed before the kill
    assert (store / "parts" / "modules-r1-000001.parquet").exists()  # and one half written
    before = {t: ids for t, ids in parts.items()}
    assert 0 < sum(map(len, before.values())) < 7

    r = torchrun(argv(save))  # the same job again
    assert r.returncode == 0, r.stderr[-3000:]
    assert one_thread_main(argv(tmp_path / "single.jsonl")) == 0

    assert_identical_results(load_results(store), load_results(tmp_path / "single.jsonl.layergrad"))
    assert save.read_bytes() == (tmp_path / "single.jsonl").read_bytes()
    assert len(save.read_text().splitlines()) == 7
    after = part_ids(store)
    assert all(after[t] == ids for t, ids in before.items())  # nothing stored was recomputed
    all_ids = [i for ids in after.values() for i in ids]
    assert len(all_ids) == len(set(all_ids)) == 7  # nothing duplicated
    leftovers = sorted(p.name for p in (store / "parts").iterdir() if p.name.split("-")[0] in ("modules", "cosine")
                       and p.name.split("-", 1)[1].removesuffix(".parquet") not in after)
    assert leftovers == []  # the half-written part was removed by its writer on the rerun
