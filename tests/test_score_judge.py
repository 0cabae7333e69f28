"""``layergrad score --judge-url``: InsTag and difficulty through a real OpenAI-compatible HTTP server on
127.0.0.1 (tests/judge_server.py), its failure paths, the answer cache, and kill and resume of a run
with every scorer (IFD, reward, judge)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import pytest

from conftest import write_json
from judge_server import KEY, MODEL, JudgeServer, expected
from layergrad import cli
from layergrad.scoring.prompts import JUDGE_PROMPTS
from layergrad.store import load_results


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def _recs(instructions):
    return [{"instruction": t, "output": f"answer {i}"} for i, t in enumerate(instructions)]


def _judge(server, out, data, *extra):
    return ["score", str(data), "--out", str(out), "--judge-url", server.url, "--judge-model", MODEL,
            "--no-progress", *extra]


def test_scores_retries_and_every_failure_path(tmp_path, capsys):
    texts = ["What is 12 plus 30?", "Please rate this [[429]] one", "A server error first [[500]] then fine",
             "Too slow at first [[slow]]", "A cut-off body [[malformed]]", "Something to refuse [[refuse]]",
             "An answer nobody reads [[garbage]]", "Hi"]
    data = write_json(tmp_path / "d.json", _recs(texts))
    with JudgeServer() as server:
        args = _judge(server, tmp_path / "s", data, "--judge-timeout", "0.5", "--judge-retries", "3",
                      "--judge-concurrency", "3", "--judge-cache", str(tmp_path / "cache.sqlite"))
        assert cli.main(args) == 0
        res = load_results(tmp_path / "s")
        ex = res.examples.set_index("index")
        for i, t in enumerate(texts):
            for kind in ("instag", "difficulty"):
                v, raw, why = ex.loc[i, kind], ex.loc[i, f"{kind}_raw"], ex.loc[i, f"{kind}_reason"]
                if "[[malformed]]" in t:
                    assert math.isnan(v) and "malformed response" in why
                elif "[[refuse]]" in t:
                    assert math.isnan(v) and "refused" in why and raw == "I can't help with that."
                elif "[[garbage]]" in t:
                    assert math.isnan(v) and raw == "I think it's fine." and why
                else:
                    assert v == expected(kind, t) and pd.isna(why), (t, kind, why)
        for marker in ("[[429]]", "[[500]]", "[[slow]]"):  # failed once, retried once
            t = next(x for x in texts if marker in x)
            assert server.counts[("instag", t)] == 2 and server.counts[("difficulty", t)] == 2
        assert {b["temperature"] for b in server.bodies} == {0.0}
        prov = res.manifest["scores"]
        assert prov["instag"]["prompt_version"] == JUDGE_PROMPTS["instag"].version and prov["difficulty"]["judge_model"] == MODEL
        assert KEY not in (tmp_path / "s" / "manifest.json").read_text()  # the key is never stored
        # a new directory sharing the cache: only what was not an answer (the malformed body) is asked again
        before = sum(server.counts.values())
        assert cli.main(_judge(server, tmp_path / "s2", data, "--judge-cache", str(tmp_path / "cache.sqlite"))) == 0
        assert sum(server.counts.values()) - before == 2
        assert "judge: 0 requests answered by the server" in capsys.readouterr().out  # the malformed two are no answers
        pd.testing.assert_frame_equal(load_results(tmp_path / "s2").examples[["instag", "difficulty"]],
                                      res.examples[["instag", "difficulty"]])


def test_missing_api_key_and_unreachable_judge_exit_2(tmp_path, monkeypatch, capsys):
    data = write_json(tmp_path / "d.json", _recs(["What is 12 plus 30?"]))
    monkeypatch.delenv("OPENAI_API_KEY")
    assert cli.main(["score", str(data), "--out", str(tmp_path / "s"), "--judge-url", "http://127.0.0.1:9/v1",
                     "--judge-model", MODEL]) == 2
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY" in err and "--judge-api-key-env" in err and not (tmp_path / "s").exists()
    monkeypatch.setenv("MY_KEY", KEY)
    assert cli.main(["score", str(data), "--out", str(tmp_path / "s"), "--judge-url", "http://127.0.0.1:9/v1",
                     "--judge-model", MODEL, "--judge-api-key-env", "MY_KEY", "--judge-retries", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "--judge-url" in err and "Traceback" not in err
    with JudgeServer() as server:
        assert cli.main(["score", str(data), "--out", str(tmp_path / "s404"), "--judge-url", server.url, "--judge-model",
                         "nope", "--judge-api-key-env", "MY_KEY", "--no-progress"]) == 2
        assert "404" in capsys.readouterr().err


def test_judge_gone_mid_run_keeps_what_was_committed_and_resumes(tmp_path, capsys):
    texts = ["A long first instruction here", "A long second instruction", "Third instruction", "Fourth one", "[[down]]"]
    data = write_json(tmp_path / "d.json", _recs(texts))
    with JudgeServer() as server:
        server.down = True
        args = _judge(server, tmp_path / "s", data, "--chunk-size", "2", "--judge-retries", "1", "--judge-concurrency", "1")
        assert cli.main(args) == 2
        assert "still answered HTTP 500" in capsys.readouterr().err
        assert len(load_results(tmp_path / "s").examples) == 4  # the two chunks before the failing one
        server.down = False
        assert cli.main(args) == 0
        assert "4 already stored" in capsys.readouterr().out
        ex = load_results(tmp_path / "s").examples
        assert len(ex) == 5 and ex["instag"].notna().all()
        assert all(server.counts[(k, t)] == 1 for t in texts[:4] for k in ("instag", "difficulty"))


def test_kill_and_resume_with_every_scorer(tmp_path):
    """A run killed after its first committed part resumes to the scores of an uninterrupted run; the
    judge is asked each prompt about once (an answer in flight at the kill may be asked again)."""
    from test_score import RECORDS, _reward_model, _save

    lm, _, _ = _save(tmp_path, "gpt2", False)
    rm, _, _ = _reward_model(tmp_path, 1, False)
    data = write_json(tmp_path / "d.json", [{k: r[k] for k in ("instruction", "input", "output")} for r in RECORDS])
    with JudgeServer(delay=0.15) as server:
        def args(out, cache):
            return _judge(server, out, data, "--ifd-model", str(lm), "--reward-model", str(rm), "--chunk-size", "1",
                          "--judge-concurrency", "1", "--judge-cache", str(cache))

        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
        out = tmp_path / "killed"
        proc = subprocess.Popen([sys.executable, "-m", "layergrad", *args(out, tmp_path / "c1.sqlite")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(out.glob("parts/examples-*.parquet")):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        committed = len(list(out.glob("parts/examples-*.parquet")))
        assert 1 <= committed < len(RECORDS), proc.stderr.read()
        assert cli.main(args(out, tmp_path / "c1.sqlite")) == 0
        asked = sum(server.counts.values())
        prompts = 2 * len({(r["instruction"], r["input"]) for r in RECORDS})  # two judged scores per distinct instruction
        assert prompts <= asked <= prompts + 1
        assert cli.main(args(tmp_path / "whole", tmp_path / "c2.sqlite")) == 0
    a, b = load_results(tmp_path / "whole").examples, load_results(out).examples
    cols = ["id", "ifd", "ifd_ppl", "loss_with_prompt", "loss_no_prompt", "reward", "instag", "difficulty"]
    assert len(b) == len(RECORDS)
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True), rtol=1e-12)


def test_parsers_give_the_papers_own_values_on_its_records():
    """The paper's records carry the judge's raw answers and the scores its parsers made of them."""
    import glob

    from conftest import DATA
    from layergrad.scoring.prompts import parse_difficulty, parse_instag

    files = sorted(glob.glob(str(DATA / "quality_10k" / "*.json")))
    if not files:
        pytest.skip(f"{DATA / 'quality_10k'} is absent (the shared data of the follow-up paper)")
    n_tag = n_diff = n_unread = 0
    for f in files[:6]:
        for r in json.loads(Path(f).read_text(encoding="utf-8")):
            if "raw_instag" in r:
                assert parse_instag(r["raw_instag"]).value == float(r["instag"]), r["raw_instag"][:200]
                n_tag += 1
            if "raw_diff" in r:
                got = parse_difficulty(r["raw_diff"])
                if "diff" in r:
                    assert got.value == float(r["diff"]), r["raw_diff"][:100]
                    n_diff += 1
                else:  # the paper's parser read nothing and left the field out: NaN with a reason here
                    assert math.isnan(got.value) and got.reason
                    n_unread += 1
    assert n_tag > 500 and n_diff > 500 and n_unread > 0


@pytest.mark.slow
def test_200_records_default_model_reward_and_judge_kill_and_resume(tmp_path):
    """The issue's whole case: 200 of the paper's records, IFD by the default model, a tiny reward model,
    the loopback judge; killed after its first committed part, resumed; spot checks against direct
    computations (the default model is fp32: rel 1e-4). --max-length 256 keeps it minutes on a CPU."""
    from conftest import DATA
    from test_score import _reward_model, oracle_ifd, oracle_reward

    src = DATA / "quality_10k" / "instag_her_10k_lowest_200.json"
    if not src.exists():
        pytest.skip(f"{src} is absent (the shared data of the follow-up paper)")
    recs = json.loads(src.read_text(encoding="utf-8"))[:200]
    data = write_json(tmp_path / "d.json", recs)
    rm, rm_model, rm_tok = _reward_model(tmp_path, 1, True)
    out = tmp_path / "s"
    with JudgeServer() as server:
        cmd = _judge(server, out, data, "--ifd-model", "default", "--reward-model", str(rm), "--max-length", "256",
                     "--chunk-size", "20")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "layergrad", *cmd], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 1200
        while time.time() < deadline and proc.poll() is None and not list(out.glob("parts/examples-*.parquet")):
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 1 <= len(list(out.glob("parts/examples-*.parquet")))
        assert cli.main(cmd) == 0
    ex = load_results(out).examples.set_index("index")
    assert len(ex) == 200
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layergrad.inputs.models import default_model_folder

    lm = AutoModelForCausalLM.from_pretrained(default_model_folder(), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(default_model_folder())
    for i in (0, 99, 199):
        if pd.isna(ex.loc[i, "ifd_reason"]):
            lp, l0 = oracle_ifd(lm, tok, recs[i], "superfiltering", max_length=256)
            assert ex.loc[i, "ifd_ppl"] == pytest.approx(math.exp(lp - l0), rel=1e-4)
        assert ex.loc[i, "reward"] == pytest.approx(oracle_reward(rm_model, rm_tok, recs[i], 0), rel=1e-10)
        assert ex.loc[i, "instag"] == expected("instag", recs[i]["instruction"])
        assert ex.loc[i, "record:instag"] == float(recs[i]["instag"])
