"""IFD against a direct computation: two separate forward passes through the plain HF model."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from conftest import make_model, make_tokenizer, write_json
from layergrad import engine
from layergrad.config import RunConfig
from layergrad.data import load_examples
from layergrad.ifd import NoPromptRule, ifd_fields
from layergrad.models import LoadedModel
from layergrad.prompting import encode
from layergrad.store import load_results

RECORDS = [
    {"instruction": "What is 12 plus 30?", "input": "", "output": "The answer is 42."},
    {"instruction": "Would a lion salute a lieutenant?", "input": "", "output": "no"},
    {"instruction": "Ava has 3 apples and buys 4 more.", "input": "How many now?", "output": "Step 1: 3 + 4 = 7. The answer is 7."},
    {"instruction": "Hi", "input": "", "output": "Step 1: Ava has 3 apples. Step 2: she buys 4 more, so 3 + 4 = 7. The final answer is 7."},
    {"instruction": "What is 12 plus 30?", "input": "", "output": "42"},
    {"instruction": "You are a helpful assistant. Would a lion salute a lieutenant? Answer.", "input": "", "output": "The final answer is no."},
    # the longest prompt: truncated away entirely at the boundary --max-length below
    {"instruction": "You are a helpful assistant. " * 3 + "What is 12 plus 30? Step 1: Ava has 3 apples.", "input": "", "output": "7"},
]


def _loaded(model, tok):
    return LoadedModel(model=model, tokenizer=tok, source="test", path="test", fingerprint="fp", dtype="float64")


def direct_ifd(model, ids: list[int], n_prompt: int, bos: int | None) -> tuple[float, float, int]:
    """(L_P, L_0, |S|) by two plain forward passes: the full text, and the response tokens alone.

    Independent of the package: the token sets are spelled out here. With a BOS the no-prompt
    sequence is [BOS] + response and every response token is scored; without, the first response
    token is dropped from BOTH means.
    """
    s = max(n_prompt, 1)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)  # (T, V)
        nll_p = [-float(logp[j - 1, ids[j]]) for j in range(s, len(ids))]
        resp = ids[s:]
        seq = ([bos] if bos is not None else []) + resp
        nll_0 = []
        if len(seq) >= 2:
            logq = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].double(), -1)
            nll_0 = [-float(logq[j - 1, seq[j]]) for j in range(1, len(seq))]
    if bos is None:
        nll_p = nll_p[1:]
    assert len(nll_p) == len(nll_0)
    if not nll_0:
        return math.nan, math.nan, 0
    return sum(nll_p) / len(nll_p), sum(nll_0) / len(nll_0), len(nll_0)


def _max_length_for_boundary(tok, mode, path) -> int:
    """A --max-length that leaves the longest-prompt example that can keep any response exactly one token."""
    exs, _ = load_examples([str(path)])
    encs = [encode(e, tok, mode, None) for e in exs]
    return max(e.n_prompt for e in encs if e.n_response > 1) + 1


# Padding a sequence to 16 tokens or more moves a rotary model's logits by ~1e-7 relative even in
# fp64 (transformers computes the rotary angles in fp32): batched runs match the unpadded direct
# passes to that precision, runs of one example per batch to fp64 precision. A wrong token set
# moves the mean loss by far more than either.
RTOL = {1: 1e-10, 3: 1e-6, 8: 1e-6}

CASES = [
    pytest.param("llama", True, "base", False, id="llama-bos-base"),
    pytest.param("llama", False, "base", False, id="llama-nobos-base"),
    pytest.param("qwen2", False, "chat", False, id="qwen2-nobos-chat"),
    pytest.param("qwen2", True, "chat", True, id="qwen2-bos-chat-truncated"),
    pytest.param("llama", False, "base", True, id="llama-nobos-base-truncated"),
    pytest.param("gpt2", True, "base", True, id="gpt2-bos-base-truncated"),
]


@pytest.mark.parametrize("arch,bos,mode,truncate,batch_size", [
    pytest.param(*c.values, 3, id=c.id + "-batched") for c in CASES] + [
    pytest.param(*c.values, 1, id=c.id + "-one") for c in CASES if c.values[3]])
def test_ifd_equals_two_direct_forward_passes(tmp_path, arch, bos, mode, truncate, batch_size):
    tok = make_tokenizer(bos=bos)
    model = make_model(arch, len(tok))
    data = write_json(tmp_path / "d.json", RECORDS)
    max_length = _max_length_for_boundary(tok, mode, data) if truncate else 1024
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "run"), progress=False, ifd=True, prompt_mode=mode,
                    max_length=max_length, batch_size=batch_size, stats_dtype="float64", skip_invalid=truncate)
    engine.run(cfg, loaded=_loaded(model, tok))
    res = load_results(cfg.out)
    bos_id = tok.bos_token_id if bos else None
    exs, _ = load_examples([str(data)])
    encs = {e.id: encode(e, tok, mode, max_length) for e in exs}
    checked = nan_one_token = 0
    for _, row in res.examples.iterrows():
        enc = encs[row["id"]]
        if row["status"] == "skipped":  # nothing to score after truncation: NaN with a reason
            assert math.isnan(row["ifd"]) and math.isnan(row["ifd_ppl"]) and "not computed" in row["ifd_reason"]
            continue
        assert row["status"] == "ok"
        lp, l0, n = direct_ifd(model, enc.input_ids, enc.n_prompt, bos_id)
        if n == 0:  # a single response token and no BOS: undefined, never 0 or -1
            assert not bos and enc.n_response == 1
            assert math.isnan(row["ifd"]) and math.isnan(row["ifd_ppl"]) and "no response token" in row["ifd_reason"]
            nan_one_token += 1
            continue
        tol = RTOL[batch_size]
        assert row["loss_no_prompt"] == pytest.approx(l0, rel=tol)
        assert row["ifd"] == pytest.approx(lp / l0, rel=tol)
        assert row["ifd_ppl"] == pytest.approx(math.exp(lp) / math.exp(l0), rel=tol)
        assert pd.isna(row["ifd_reason"])
        if bos:  # the numerator is the run's loss itself
            assert row["ifd"] == row["loss"] / row["loss_no_prompt"]
        checked += 1
    assert checked >= 2
    if truncate:
        assert (res.examples["status"] == "skipped").sum() == 1
        cut = [i for i, e in encs.items() if e.truncated and e.n_response == 1]
        assert cut  # the boundary example keeps exactly one response token
        ifd_cut = res.examples.set_index("id").loc[cut, "ifd"]
        assert ifd_cut.isna().all() if not bos else ifd_cut.notna().all()
        assert any(e.truncated and e.n_response > 1 for e in encs.values())  # and one is cut mid-response
    assert res.manifest["ifd"] is True and res.manifest["ifd_rule"] == NoPromptRule(bos_id).describe()


@pytest.mark.parametrize("bos", [True, False])
def test_no_prompt_input_is_the_response_ids_of_the_full_tokenisation(bos):
    tok = make_tokenizer(bos=bos)
    rule = NoPromptRule.for_tokenizer(tok)
    assert rule.bos_id == (tok.bos_token_id if bos else None)
    exs, _ = load_examples([write_json_tmp(RECORDS)])
    for ex in exs:
        for max_length in (None, 14):
            enc = encode(ex, tok, "base", max_length)
            s = max(enc.n_prompt, 1)
            want = ([tok.bos_token_id] if bos else []) + enc.input_ids[s:]
            assert rule.input_ids(enc) == want  # never a re-tokenisation of the response text
            assert rule.n_scored(enc) == max(0, enc.n_response - (0 if bos else 1))


def write_json_tmp(records):
    import json
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as fh:
        json.dump(records, fh)
    return fh.name


def test_ifd_pass_leaves_the_gradient_statistics_unchanged(tmp_path):
    """The extra no-grad forward must not reach the capture hooks or the gather index."""
    tok = make_tokenizer()
    model = make_model("llama", len(tok))
    data = write_json(tmp_path / "d.json", RECORDS)
    out = {}
    for ifd in (False, True):
        cfg = RunConfig(data=[str(data)], out=str(tmp_path / f"run{ifd}"), progress=False, ifd=ifd, prompt_mode="base",
                        batch_size=4, stats_dtype="float64")
        engine.run(cfg, loaded=_loaded(model, tok))
        out[ifd] = load_results(cfg.out)
    a, b = out[False].modules, out[True].modules
    assert len(a) == len(b) > 0
    for k in ("nuclear", "effective_rank", "spectral"):
        assert a[k].tolist() == b[k].tolist()
    assert out[False].examples["loss"].tolist() == out[True].examples["loss"].tolist()
    assert "ifd" not in out[False].examples.columns


def test_ifd_without_the_gather_hook(tmp_path):
    """With lm_head measured, logits are computed at every position (the gather hook is off)."""
    tok = make_tokenizer(bos=False)
    model = make_model("llama", len(tok))
    data = write_json(tmp_path / "d.json", RECORDS[:3])
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "run"), progress=False, ifd=True, prompt_mode="base",
                    modules="attn,lm_head", stats_dtype="float64")
    engine.run(cfg, loaded=_loaded(model, tok))
    res = load_results(cfg.out)
    exs, _ = load_examples([str(data)])
    for ex, (_, row) in zip(exs, res.examples.iterrows()):
        enc = encode(ex, tok, "base", 1024)
        lp, l0, n = direct_ifd(model, enc.input_ids, enc.n_prompt, None)
        if n:
            assert row["ifd"] == pytest.approx(lp / l0, rel=RTOL[8])
        else:
            assert math.isnan(row["ifd"])


def test_invalid_records_get_nan_ifd_with_reason(tmp_path):
    tok = make_tokenizer()
    model = make_model("llama", len(tok))
    data = write_json(tmp_path / "d.json", RECORDS[:2] + [{"instruction": "x", "output": ""}])
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "run"), progress=False, ifd=True, prompt_mode="base", skip_invalid=True)
    engine.run(cfg, loaded=_loaded(model, tok))
    ex = load_results(cfg.out).examples
    bad = ex[ex["status"] == "invalid"].iloc[0]
    assert math.isnan(bad["ifd"]) and bad["ifd_reason"].startswith("not computed (invalid)")
    assert ex.loc[ex["status"] == "ok", "ifd"].notna().all()


# ------------------------------------------------------------------------------- the math


def test_ifd_fields_math_and_undefined_cases():
    f = ifd_fields(1.5, 2.0, 4)
    assert f["ifd"] == 0.75 and f["ifd_ppl"] == pytest.approx(math.exp(-0.5)) and f["ifd_reason"] is None
    assert f["loss_no_prompt"] == 2.0 and f["loss_with_prompt"] == 1.5
    for lp, l0, n, why in [(1.0, 0.0, 3, "is 0"), (math.nan, 1.0, 3, "with-prompt"), (1.0, math.inf, 3, "no-prompt"),
                           (1.0, 1.0, 0, "no response token")]:
        g = ifd_fields(lp, l0, n)
        assert math.isnan(g["ifd"]) and math.isnan(g["ifd_ppl"]) and why in g["ifd_reason"]
    big = ifd_fields(900.0, 1.0, 2)  # exp(900) overflows; the ratio of exponentials does not need to
    assert big["ifd"] == 900.0 and big["ifd_ppl"] == math.inf
    assert ifd_fields(3.0, 1.0, 2)["ifd_ppl"] == pytest.approx(math.exp(2.0))
