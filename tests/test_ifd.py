"""IFD against an oracle per published definition, written here from each paper's description.

The oracle (``oracle_ifd`` and its helpers) imports nothing from ``layergrad.run.ifd``,
``layergrad.inputs.prompting`` or ``layergrad.run.loss``: it builds the run's text itself, tokenises and masks
with the tokenizer as the published scripts do (the prompt is the first
``len(tokenizer(text[:text.rfind(response)]))`` tokens), and computes its own float64 cross-entropy,
one example and one sequence at a time:

* Cherry_LLM (``cherry_seletion/data_analysis.py`` / ``data_by_IFD.py``): conditioned pass = the
  whole text, every response token scored; response-alone pass = ``'### Response:' + response``
  tokenised whole, masked the same way, every response token scored; ``ifd`` = ratio of the means.
* Superfiltering (``code_ifd/data_analysis.py``): conditioned pass as Cherry's; response-alone pass =
  ``tokenizer(response)`` with ``labels = input_ids``: tokens 1.. are scored, so without a BOS the
  first response token is in the numerator only; ``ifd_ppl`` = ratio of the perplexities.

Where layergrad deviates on purpose (the run's own prompt text; the response-alone pass keeps
exactly the response tokens the conditioned pass kept after --max-length), the oracle does the
same; the records here tokenise the response alike at the start of a text and after the prompt.
"""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from conftest import make_model, make_tokenizer, save_model, write_json
from layergrad import cli
from layergrad.run import engine
from layergrad.config import RunConfig
from layergrad.inputs.data import load_examples
from layergrad.inputs.models import LoadedModel
from layergrad.store import ConfigMismatch, load_results

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

DEFINITIONS = ["cherry", "superfiltering"]


def _loaded(model, tok):
    return LoadedModel(model=model, tokenizer=tok, source="test", path="test", fingerprint="fp", dtype="float64")


# ------------------------------------------------------------------------------- the oracle

SYSTEM = "You are a helpful assistant."  # the system turn of layergrad's chat mode, spelled out
CHERRY_ALONE = "### Response:"  # what Cherry_LLM puts before the response in its response-alone pass


def run_text(tok, prompt: str, response: str, mode: str) -> str:
    """The text layergrad trains on: base ``prompt + '\\n' + response``; chat: system + user turn, generation prompt."""
    if mode == "base":
        return prompt + "\n" + response
    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    return tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) + response


def masked(tok, text: str, response: str) -> tuple[list[int], int]:
    """``(ids, first scored position)`` as both scripts mask: the tokens of ``text[:text.rfind(response)]`` are context."""
    ids = tok(text)["input_ids"]
    return ids, max(len(tok(text[: text.rfind(response)])["input_ids"]), 1)


def mean_nll(model, ids: list[int], first: int) -> tuple[float, int]:
    """Mean ``-log p(ids[j] | ids[:j])`` over ``j >= first`` (float64), and how many terms; NaN without any."""
    if first >= len(ids):
        return math.nan, 0
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)  # (T, V)
    nll = [-float(logp[j - 1, ids[j]]) for j in range(first, len(ids))]
    return sum(nll) / len(nll), len(nll)


def oracle_ifd(model, tok, prompt: str, response: str, mode: str, max_length: int, definition: str) -> dict:
    """One example by the named definition: the losses, both ratios, and the token counts."""
    ids, first = masked(tok, run_text(tok, prompt, response, mode), response)
    ids = ids[:max_length]
    n_resp = len(ids) - first  # response tokens kept by the conditioned pass
    out = {"n_prompt": first, "n_response": n_resp}
    if n_resp <= 0:
        return out
    lp, _ = mean_nll(model, ids, first)  # conditioned pass: every response token, the first given the prompt
    if definition == "cherry":  # '### Response:' + response, every response token scored
        alone, a_first = masked(tok, CHERRY_ALONE + response, response)
    else:  # the response alone, HF labels = input_ids: positions 1.. are predicted
        alone, a_first = tok(response)["input_ids"], 1
    n_special = len(tok(response)["input_ids"]) - len(tok(response, add_special_tokens=False)["input_ids"])
    keep = (a_first if definition == "cherry" else n_special) + n_resp  # the same response tokens as the conditioned pass
    l0, n0 = mean_nll(model, alone[:keep], a_first)
    out.update(lp=lp, l0=l0, n0=n0)
    if n0:
        out.update(ifd=lp / l0, ifd_ppl=math.exp(lp) / math.exp(l0))
    return out


def _max_length_for_boundary(tok, mode, records) -> int:
    """A --max-length that leaves the longest-prompt example that can keep any response exactly one token."""
    firsts = []
    for r in records:
        prompt = r["instruction"] + ("\n" + r["input"] if r["input"] else "")
        ids, first = masked(tok, run_text(tok, prompt, r["output"], mode), r["output"])
        if len(ids) - first > 1:
            firsts.append(first)
    return max(firsts) + 1


def check_against_oracle(res, model, tok, data, mode, max_length, definition, rtol) -> dict:
    """Every stored row equals the oracle; returns counts of what was checked."""
    exs = {e.id: e for e in load_examples([str(data)])[0]}
    seen = {"checked": 0, "undefined": 0, "skipped": 0}
    for _, row in res.examples.iterrows():
        ex = exs[row["id"]]
        o = oracle_ifd(model, tok, ex.prompt, ex.response, mode, max_length, definition)
        if o["n_response"] <= 0:  # nothing to score after truncation: NaN with a reason
            assert row["status"] == "skipped"
            assert math.isnan(row["ifd"]) and math.isnan(row["ifd_ppl"]) and "not computed" in row["ifd_reason"]
            seen["skipped"] += 1
            continue
        assert row["status"] == "ok"
        assert (row["n_prompt_tokens"], row["n_response_tokens"]) == (o["n_prompt"], o["n_response"])
        assert row["loss"] == pytest.approx(o["lp"], rel=rtol)
        assert row["loss_with_prompt"] == pytest.approx(o["lp"], rel=rtol)
        if not o["n0"]:  # superfiltering, no BOS, one response token: undefined, never 0 or -1
            assert definition == "superfiltering" and o["n_response"] == 1
            assert math.isnan(row["ifd"]) and math.isnan(row["ifd_ppl"]) and "no response token" in row["ifd_reason"]
            seen["undefined"] += 1
            continue
        assert row["loss_no_prompt"] == pytest.approx(o["l0"], rel=rtol)
        assert row["ifd"] == pytest.approx(o["ifd"], rel=rtol)
        assert row["ifd_ppl"] == pytest.approx(o["ifd_ppl"], rel=rtol)
        assert pd.isna(row["ifd_reason"])
        seen["checked"] += 1
    return seen


# ------------------------------------------------------------------------------- the run against it

# Padding a sequence to 16 tokens or more moves a rotary model's logits by ~1e-7 relative even in
# fp64 (transformers computes the rotary angles in fp32): batched runs match the unpadded oracle
# to that precision, runs of one example per batch to fp64 precision (1e-10). A wrong token set
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


@pytest.mark.parametrize("definition", DEFINITIONS)
@pytest.mark.parametrize("arch,bos,mode,truncate,batch_size", [
    pytest.param(*c.values, 1, id=c.id + "-one") for c in CASES] + [
    pytest.param(*c.values, 3, id=c.id + "-batched") for c in CASES])
def test_ifd_equals_the_papers_definition(tmp_path, definition, arch, bos, mode, truncate, batch_size):
    tok = make_tokenizer(bos=bos)
    model = make_model(arch, len(tok))
    data = write_json(tmp_path / "d.json", RECORDS)
    max_length = _max_length_for_boundary(tok, mode, RECORDS) if truncate else 1024
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "run"), progress=False, ifd=definition, prompt_mode=mode,
                    max_length=max_length, batch_size=batch_size, stats_dtype="float64", skip_invalid=truncate)
    engine.run(cfg, loaded=_loaded(model, tok))
    res = load_results(cfg.out)
    seen = check_against_oracle(res, model, tok, data, mode, max_length, definition, RTOL[batch_size])
    assert seen["checked"] >= 4
    # Cherry scores every response token without the prompt too (after '### Response:'); Superfiltering
    # without a BOS leaves a one-token response nothing to be predicted from
    assert seen["undefined"] == 0 if (definition == "cherry" or bos) else seen["undefined"] >= 1
    assert seen["skipped"] == (1 if truncate else 0)
    if truncate:  # the boundary example keeps exactly one response token, another is cut mid-response
        ex = res.examples.set_index("id")
        assert (ex.loc[ex["status"] == "ok", "n_response_tokens"] == 1).any() and ex["truncated"].sum() >= 2
    assert res.manifest["ifd"] == definition
    assert res.manifest["ifd_rule"].startswith(definition + ":")


@pytest.mark.parametrize("flag,definition", [(["--ifd"], "cherry"), (["--ifd", "cherry"], "cherry"),
                                             (["--ifd", "superfiltering"], "superfiltering")])
def test_cli_ifd_by_name_in_fp64(tmp_path, flag, definition):
    """``run --ifd [NAME] --dtype fp64 --stats-dtype float64`` from a saved model: the oracle to 1e-10."""
    tok = make_tokenizer(bos=False)
    folder = save_model(tmp_path, "llama", tok)
    data = write_json(tmp_path / "d.json", RECORDS[:5])
    out = tmp_path / "run"
    code = cli.main(["run", "--model", str(folder), "--data", str(data), "--out", str(out), *flag, "--dtype", "fp64",
                     "--stats-dtype", "float64", "--prompt-mode", "base", "--batch-size", "1", "--modules", "attn", "--no-progress"])
    assert code == 0
    res = load_results(out)
    assert res.manifest["ifd"] == definition
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float64).eval()  # as the run loaded it
    seen = check_against_oracle(res, model, tok, data, "base", 1024, definition, 1e-10)
    assert seen["checked"] >= 3


def test_cli_unknown_definition_is_a_clear_error(tmp_path, capsys):
    data = write_json(tmp_path / "d.json", RECORDS[:1])
    code = cli.main(["run", "--data", str(data), "--out", str(tmp_path / "o"), "--ifd", "chery", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "did you mean 'cherry'" in err and "superfiltering" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_config_values_map_to_definition_names(tmp_path):
    base = dict(data=["d.json"], out="o")
    assert RunConfig(**base).ifd is None
    assert RunConfig(**base, ifd=False).ifd is None
    assert RunConfig(**base, ifd=True).ifd == "cherry"  # older configs: `ifd = true` is the default definition
    assert RunConfig(**base, ifd="Superfiltering").ifd == "superfiltering"
    from layergrad.run.ifd import DEFAULT_IFD, IFD_DEFINITIONS, IFDError, ifd_definition

    assert IFD_DEFINITIONS == ("cherry", "superfiltering") and DEFAULT_IFD == "cherry"
    from layergrad.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'superfiltering'"):  # checked with every other option
        RunConfig(**base, ifd="superfilter").validate()
    with pytest.raises(ConfigError, match="1.5; use true, false or one of: cherry, superfiltering"):
        RunConfig(**base, ifd=1.5).validate()
    with pytest.raises(IFDError, match="did you mean 'superfiltering'"):  # the name's own parser
        ifd_definition("superfilter")
    import tomllib

    for text, want in [("ifd = true", "cherry"), ("ifd = false", None), ('ifd = "superfiltering"', "superfiltering")]:
        assert RunConfig.from_dict({**base, **tomllib.loads(text)}).ifd == want


def test_resume_with_another_definition_is_refused(tmp_path):
    tok = make_tokenizer(bos=False)
    model = make_model("llama", len(tok))
    data = write_json(tmp_path / "d.json", RECORDS[:2])
    kw = dict(data=[str(data)], out=str(tmp_path / "run"), progress=False, prompt_mode="base", modules="attn")
    engine.run(RunConfig(**kw, ifd="cherry"), loaded=_loaded(model, tok))
    engine.run(RunConfig(**kw, ifd=True), loaded=_loaded(model, tok))  # --ifd alone is the same definition: resumes
    with pytest.raises(ConfigMismatch, match="ifd"):
        engine.run(RunConfig(**kw, ifd="superfiltering"), loaded=_loaded(model, tok))
    with pytest.raises(ConfigMismatch, match="ifd"):
        engine.run(RunConfig(**kw), loaded=_loaded(model, tok))
    assert load_results(kw["out"]).manifest["ifd"] == "cherry"


@pytest.mark.parametrize("bos", [True, False])
def test_response_alone_input_is_the_response_ids_of_the_full_tokenisation(bos):
    from layergrad.run.ifd import NoPromptRule
    from layergrad.inputs.prompting import encode

    tok = make_tokenizer(bos=bos)
    b = [tok.bos_token_id] if bos else []
    cherry = NoPromptRule.for_tokenizer(tok, "cherry")
    sf = NoPromptRule.for_tokenizer(tok, "superfiltering")
    assert NoPromptRule.for_tokenizer(tok) == NoPromptRule.for_tokenizer(tok, True) == cherry
    assert list(cherry.prefix) == b + tok("### Response:", add_special_tokens=False)["input_ids"] and cherry.skip == 0
    assert list(sf.prefix) == b and sf.skip == (0 if bos else 1)
    exs, _ = load_examples([write_json_tmp(RECORDS)])
    for ex in exs:
        for max_length in (None, 14):
            enc = encode(ex, tok, "base", max_length)
            r = enc.input_ids[max(enc.n_prompt, 1):]
            assert cherry.input_ids(enc) == list(cherry.prefix) + r  # never a re-tokenisation of the response text
            assert sf.input_ids(enc) == b + r
            assert cherry.n_scored(enc) == enc.n_response
            assert sf.n_scored(enc) == max(0, enc.n_response - (0 if bos else 1))


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
    for ifd in (None, "cherry", "superfiltering"):
        cfg = RunConfig(data=[str(data)], out=str(tmp_path / f"run{ifd}"), progress=False, ifd=ifd, prompt_mode="base",
                        batch_size=4, stats_dtype="float64")
        engine.run(cfg, loaded=_loaded(model, tok))
        out[ifd] = load_results(cfg.out)
    for ifd in ("cherry", "superfiltering"):
        a, b = out[None].modules, out[ifd].modules
        assert len(a) == len(b) > 0
        for k in ("nuclear", "effective_rank", "spectral"):
            assert a[k].tolist() == b[k].tolist()
        assert out[None].examples["loss"].tolist() == out[ifd].examples["loss"].tolist()
    assert "ifd" not in out[None].examples.columns and out[None].manifest["ifd"] is False


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_ifd_without_the_gather_hook(tmp_path, definition):
    """With lm_head measured, logits are computed at every position (the gather hook is off)."""
    tok = make_tokenizer(bos=False)
    model = make_model("llama", len(tok))
    data = write_json(tmp_path / "d.json", RECORDS[:3])
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "run"), progress=False, ifd=definition, prompt_mode="base",
                    modules="attn,lm_head", stats_dtype="float64")
    engine.run(cfg, loaded=_loaded(model, tok))
    check_against_oracle(load_results(cfg.out), model, tok, data, "base", 1024, definition, RTOL[8])


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
    from layergrad.run.ifd import ifd_fields

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
