"""Hub models through the standard Hugging Face cache, offline: a cache built here in the layout
huggingface_hub reads (``models--org--name/snapshots/<sha>/``, ``refs/<ref>``), HF_HUB_OFFLINE=1.

The oracle is the same folder passed as a path: a hub id must give exactly its statistics.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, RECORDS, make_tokenizer, save_model, write_json
from layergrad.cli import main
from layergrad.config import RunConfig
from layergrad.inputs.models import ModelError, is_hub_id, load_model, parse_model_ref
from layergrad.run import engine
from layergrad.store import ConfigMismatch, load_results

SHA = "0123456789abcdef0123456789abcdef01234567"
SHA2 = "fedcba9876543210fedcba9876543210fedcba98"
METRICS = ["nuclear", "spectral", "frobenius", "min_sigma", "effective_rank", "stable_rank"]


def add_snapshot(cache: Path, repo: str, folder: Path, sha: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Put ``folder``'s files into ``cache`` as huggingface_hub lays out a download: blobs, a snapshot of
    symlinks named by the commit, and refs naming that commit."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / sha
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in sorted(folder.iterdir()):
        blob = root / "blobs" / f"{sha[:8]}-{f.name}"
        shutil.copyfile(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(sha)
    return snap


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    folder = save_model(tmp, "llama", make_tokenizer())
    cache = tmp / "hf-cache"
    add_snapshot(cache, "org/tiny", folder, SHA)
    add_snapshot(cache, "org/tiny", folder, SHA2, refs=("v2",))
    data = write_json(tmp / "d.json", RECORDS[:3])
    return folder, cache, data


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _run(tmp_path, data, out, **kw):
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / out), progress=False, stats_dtype="float64",
                    spectrum_k=None, device="cpu", **kw)
    engine.run(cfg)
    return load_results(cfg.out)


def _stats(res):
    return res.modules.sort_values(["id", "module"]).reset_index(drop=True)[["id", "module", *METRICS]]


def test_hub_id_forms():
    assert parse_model_ref("org/name") == ("org/name", None)
    assert parse_model_ref("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_model_ref("org/name", "dev") == ("org/name", "dev")
    with pytest.raises(ModelError, match="names revision 'a' but --revision is 'b'"):
        parse_model_ref("org/name@a", "b")
    with pytest.raises(ModelError, match="nothing after '@'"):
        parse_model_ref("org/name@")
    assert is_hub_id("Qwen/Qwen2.5-0.5B") and is_hub_id("org/name@main")
    assert not is_hub_id("./org/name") and not is_hub_id("/abs/path") and not is_hub_id("model.gguf")
    assert not is_hub_id("a/b/c") and not is_hub_id("default")


def test_hub_id_gives_the_folders_statistics_exactly(tmp_path, hub):
    folder, cache, data = hub
    local = _run(tmp_path, data, "local", model=str(folder))
    by_id = _run(tmp_path, data, "id", model="org/tiny", cache_dir=str(cache))
    by_sha = _run(tmp_path, data, "sha", model=f"org/tiny@{SHA}", cache_dir=str(cache))
    by_flag = _run(tmp_path, data, "flag", model="org/tiny", revision="v2", cache_dir=str(cache))
    want = _stats(local)
    assert len(want) == 3 * 3 * 7  # 3 examples x 3 layers x 7 projections
    for res in (by_id, by_sha, by_flag):
        got = _stats(res)
        assert got.equals(want)  # bit for bit: the same files, loaded the same way
        assert res.manifest["model_fingerprint"] == local.manifest["model_fingerprint"]
    assert local.manifest["model_repo"] is None and local.manifest["model_revision"] is None
    assert by_id.manifest["model_repo"] == "org/tiny" and by_id.manifest["model_revision"] == SHA
    assert by_sha.manifest["model_revision"] == SHA
    assert by_flag.manifest["model_revision"] == SHA2  # the tag resolved to its commit
    assert Path(by_id.manifest["model_path"]) == cache / "models--org--tiny" / "snapshots" / SHA


def test_resume_with_another_revision_is_refused(tmp_path, hub):
    _, cache, data = hub
    _run(tmp_path, data, "r", model="org/tiny", cache_dir=str(cache))
    with pytest.raises(ConfigMismatch, match=f"model_revision: stored '{SHA}', now '{SHA2}'"):
        _run(tmp_path, data, "r", model="org/tiny@v2", cache_dir=str(cache))
    _run(tmp_path, data, "r", model=f"org/tiny@{SHA}", cache_dir=str(cache))  # the same commit by its hash resumes


def test_missing_id_offline_says_go_online_or_download(tmp_path, hub):
    _, cache, _ = hub
    with pytest.raises(ModelError) as err:
        load_model("org/absent", cache_dir=str(cache))
    msg = str(err.value)
    assert "'org/absent'" in msg and "not in the Hugging Face cache" in msg and str(cache) in msg
    assert "go online (unset HF_HUB_OFFLINE)" in msg and "hf download org/absent" in msg


def test_missing_revision_offline(tmp_path, hub):
    _, cache, _ = hub
    with pytest.raises(ModelError, match="'org/tiny' at revision 'v9' is not in the Hugging Face cache") as err:
        load_model("org/tiny@v9", cache_dir=str(cache))
    assert "hf download org/tiny --revision v9" in str(err.value)


def test_revision_on_a_local_path_is_refused(hub):
    folder, _, _ = hub
    with pytest.raises(ModelError, match="applies to hub ids only"):
        load_model(str(folder), revision="main")


def test_cli_errors_exit_2(tmp_path, hub, capsys):
    _, cache, data = hub
    rc = main(["run", "--model", "org/absent", "--cache-dir", str(cache), "--data", str(data),
               "--out", str(tmp_path / "o"), "--no-progress", "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "go online" in err and "Traceback" not in err


def test_dropin_model_name_or_path_and_cache_dir(tmp_path, hub):
    """The paper's command line with a hub id and its --cache_dir, honoured."""
    folder, cache, data = hub
    args = ["run", "--data_path", str(data), "--max_length", "64", "--no-progress", "--device", "cpu"]
    assert main([*args, "--save_path", str(tmp_path / "local.jsonl"), "--model_name_or_path", str(folder)]) == 0
    assert main([*args, "--save_path", str(tmp_path / "hub.jsonl"), "--model_name_or_path", "org/tiny",
                 "--cache_dir", str(cache)]) == 0
    local = [json.loads(x) for x in (tmp_path / "local.jsonl").read_text().splitlines()]
    hubbed = [json.loads(x) for x in (tmp_path / "hub.jsonl").read_text().splitlines()]
    assert local == hubbed and len(local) == 3
    assert load_results(tmp_path / "hub.jsonl.layergrad").manifest["model_revision"] == SHA


def test_hf_home_is_honoured_from_the_environment(tmp_path, hub):
    """A fresh process, as users run it: HF_HOME names the cache (hub/ under it), HF_HUB_OFFLINE=1."""
    folder, _, data = hub
    home = tmp_path / "hf-home"
    add_snapshot(home / "hub", "org/tiny", folder, SHA)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("HF_HUB_CACHE", None)
    out = tmp_path / "env-run"
    proc = subprocess.run([sys.executable, "-m", "layergrad", "run", "--model", "org/tiny", "--data", str(data),
                           "--out", str(out), "--no-progress", "--device", "cpu", "--limit", "1", "--modules", "q"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = load_results(out).manifest
    assert m["model_repo"] == "org/tiny" and m["model_revision"] == SHA
    assert Path(m["model_path"]).is_relative_to(home / "hub")


def _fresh_process(tmp_path, env_extra: dict, *argv, offline: bool = False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra,
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_DATASETS_OFFLINE"):
        env.pop(k, None)
    import time

    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "layergrad", *argv], env=env, capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - t0


def test_an_unreachable_hub_fails_at_once_saying_what_to_do(tmp_path, hub):
    """No network (an unresolvable HF_ENDPOINT: the name lookup fails locally, nothing leaves the machine):
    the message comes without huggingface_hub's ~25 s of retries, naming HF_HUB_OFFLINE=1, the cache and
    `hf download`; a model already in the cache is still loaded from it."""
    folder, _, data = hub
    home = tmp_path / "hf-home"
    env = {"HF_HOME": str(home), "HF_ENDPOINT": "http://nonexistent.invalid"}
    argv = ["run", "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress", "--device", "cpu", "--limit", "1",
            "--modules", "q"]
    proc, _ = _fresh_process(tmp_path, env, *argv[:1], "--model", "Qwen/Qwen2.5-0.5B", *argv[1:])
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr
    assert "Retrying in" not in err and "Traceback" not in err
    assert "HF_HUB_OFFLINE=1" in err and str(home / "hub") in err and "`hf download Qwen/Qwen2.5-0.5B`" in err
    assert "http://nonexistent.invalid" in err and "cannot be reached" in err
    # no retry: huggingface_hub's five (1+2+4+8+8 s of sleep) each log "Retrying in"; the time of a fresh process
    # is its imports on a busy machine, so the check is their absence, not a clock
    add_snapshot(home / "hub", "org/tiny", folder, SHA)
    proc, _ = _fresh_process(tmp_path, env, *argv[:1], "--model", "org/tiny", *argv[1:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Retrying in" not in proc.stderr


def test_an_unreachable_hub_tokenizer_fails_at_once_or_comes_from_the_cache(tmp_path, hub):
    """`import --tokenizer ORG/NAME` (the tokenizer alone) without network: as a model, no retries."""
    folder, _, _ = hub
    home = tmp_path / "hf-home"
    env = {"HF_HOME": str(home), "HF_ENDPOINT": "http://nonexistent.invalid"}
    paper = tmp_path / "paper.jsonl"
    paper.write_text(json.dumps({"id": 0, "instruction": "Q?", "output": "A.", "nuclear_norm": {}}) + "\n")
    argv = ["import", str(paper), "--to", str(tmp_path / "imp")]
    proc, _ = _fresh_process(tmp_path, env, *argv, "--tokenizer", "Qwen/Qwen2.5-0.5B")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Retrying in" not in proc.stderr and "Traceback" not in proc.stderr
    assert "cannot be reached" in proc.stderr and "HF_HUB_OFFLINE=1" in proc.stderr
    add_snapshot(home / "hub", "org/tiny", folder, SHA)
    proc, _ = _fresh_process(tmp_path, env, *argv, "--tokenizer", "org/tiny")
    assert "Retrying in" not in proc.stderr and "Traceback" not in proc.stderr
    assert "cannot be reached" not in proc.stderr  # the tokenizer came from the cache; whatever the import says next


def test_an_unreachable_hub_dataset_fails_at_once(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": "http://nonexistent.invalid"}
    proc, _ = _fresh_process(tmp_path, env, "validate", "someorg/somedata")
    assert proc.returncode == 1, proc.stderr[-2000:]  # validate: the problem is listed, exit 1
    err = proc.stdout + proc.stderr
    assert "Retrying in" not in err and "Traceback" not in err
    assert "HF_HUB_OFFLINE=1" in err and "cannot be reached" in err and "hf download someorg/somedata --repo-type dataset" in err
