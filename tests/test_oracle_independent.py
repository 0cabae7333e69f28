"""An independent oracle for ``layergrad run``: per-example, per-(layer, role) gradient spectra.

What the oracle shares with the package: NOTHING but the model and tokenizer objects (the tiny
random-weight models and the tokenizer of ``tests/conftest.py``, saved to a folder with
``save_model`` and loaded back from it with ``transformers``' Auto classes, as the tool loads them).
It does not import ``layergrad`` anywhere; the only package calls in this file are running the tool
(``layergrad.cli.main``) and reading what it stored (``layergrad.store.load_results``).

The oracle, all in float64, one example at a time, no padding, model in eval mode, eager attention
(with its softmax kept in float64, see TOL):

1. Text and response mask (``--prompt-mode base``): the prompt is ``instruction`` (plus
   ``"\\n" + input`` when input is not empty), the text ``prompt + "\\n" + output``; the response
   starts at character ``len(prompt) + 1``.  Tokenised by the folder's tokenizer (for the Qwen2 folder
   transformers loads a ``Qwen2Tokenizer``, which splits differently from the in-memory test
   tokenizer; the tool loads the same one) with ``return_offsets_mapping=True``.  The first response
   token is the first token whose offsets ``(a, b)`` have ``a >= response_start`` and ``b > a`` (the
   BOS ``<s>`` has offsets (0, 0)); its index is ``n_prompt``.  The loss is the mean natural-log
   cross-entropy of the predictions of tokens ``j`` for ``max(n_prompt, 1) <= j < T``.
2. Gradients: ``loss.backward()`` and each weight's own ``.grad`` (autograd on the parameter itself,
   no hooks, no factored forms).  Fused matrices are sliced exactly as each model's forward slices
   their outputs (transformers' ``modeling_*.py``):

   * Llama, Qwen2, Gemma, Gemma2, Mistral: ``q_proj`` ... ``down_proj`` are separate ``nn.Linear``.
   * Phi-3: ``qkv_proj`` rows ``[q | k | v]`` (``qkv[..., :query_pos]`` etc.), ``gate_up_proj`` rows
     ``[gate | up]`` (``chunk(2, dim=-1)``).
   * GPT-2: ``Conv1D`` weights are stored (in, out); ``c_attn``'s output columns are ``[q | k | v]``
     (``split(split_size, dim=2)``); every gradient is transposed to (out, in).
   * GPT-NeoX: ``query_key_value`` output is ``view(..., n_heads, 3 * head_size)`` then
     ``chunk(3, dim=-1)``: row ``c`` is head ``c // (3 hs)``, role ``"qkv"[(c % (3 hs)) // hs]``.
   * The output head (``get_output_embeddings()``): its weight's full ``.grad``.  When the head is
     tied to the input embedding (GPT-2, Gemma, Gemma2, ``llama_tied``) that gradient also holds the
     embedding's use (autograd sums both; for Gemma ``padding_idx=0`` = the BOS id zeroes the BOS
     row's embedding-use gradient, which autograd does for us).
3. Metrics from ``torch.linalg.svdvals`` (float64) of each (out x in) gradient, written out here:
   ``rank = min(T_total, in, out)`` with ``T_total = T * uses`` (uses = 2 for a tied head: the head
   and the embedding), and ``min_sigma`` = 0 exactly when ``rank < min(in, out)``.

The contract checked: one row per (layer, role) that the architecture has, for every example;
fused matrices split into ``"<path>[<role>]"`` rows (``param`` the fused weight, ``out_features`` the
slice); an ``lm_head`` row (layer -1) with a ``tied_with`` column naming the input embedding when
tied; ``rank`` as above; ``--spectrum-k all`` stores the singular values, never more than ``rank``;
metrics within TOL (1e-8) relative, min_sigma relative to s_1; loss within LOSS_TOL (1e-10).
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import RECORDS, save_model, write_json

ARCH_IDS = ["llama", "qwen2", "gemma", "gemma2", "mistral", "phi3", "gpt2", "gpt_neox", "llama_tied"]

# The five conftest records (different lengths, so the default batch is padded) plus one short record
# with T = 7 tokens (every folder's tokenizer) < hidden width 16: there min(T, in, out) < min(in, out), so min_sigma must be 0,
# and a tied head's rank min(2T, vocab, hidden) = 14 differs from an untied head's min(T, ...) = 7.
SHORT = {"instruction": "Ava?", "input": "", "output": "7."}
DATA = [dict(r) for r in RECORDS] + [SHORT]

METRICS = ("nuclear", "spectral", "frobenius", "min_sigma", "top1_share", "effective_rank", "stable_rank")

# Tolerances.  The contract: 1e-8 relative on every metric, 1e-10 on the loss.
#
# The oracle runs transformers' eager attention with its softmax upgraded to float64 (see
# ``float64_softmax``): eager_attention_forward in modeling_llama/qwen2/gemma/gemma2/mistral/phi3/
# gpt_neox.py calls ``softmax(..., dtype=torch.float32)`` even for a float64 model, which rounds the
# attention probabilities to float32 (~6e-8 relative) and, through three layers and the backward
# pass, moves the loss by up to ~1e-7 and the metrics by up to ~2e-6 relative (measured).  That noise
# is not even reproducible: a row padded to a batch's longest sequence is reduced in another order
# than the unpadded row, and any 1e-16 change upstream can flip a float32 rounding.  With the softmax
# in float64, eager equals SDPA in float64 (which the tool loads by default) to ~1e-16.
#
# Rotary angles are also computed in float32 by transformers for every dtype, but identically for
# the same integer positions in the tool and the oracle, so they separate nothing.
TOL = {arch: 1e-8 for arch in ARCH_IDS}
LOSS_TOL = {arch: 1e-10 for arch in ARCH_IDS}
# Gemma2 is the exception: transformers makes Gemma2 run eager attention (for its attention logit
# soft-capping, which SDPA lacks), so the tool's numbers carry that float32 softmax: it is part of the
# model as transformers defines it. The oracle therefore keeps the stock softmax for Gemma2
# (``STOCK_SOFTMAX``); one example a batch the two computations are then the same function, and in a
# padded batch the float32 softmax rounds a padded row differently (see TOL_PADDED).
STOCK_SOFTMAX = {"gemma2"}
TOL_PADDED = dict(TOL, gemma2=1e-6)
LOSS_TOL_PADDED = dict(LOSS_TOL, gemma2=1e-7)  # measured 3.4e-8
# ``spectrum`` is a list<float32> column (store/schema.py), so it can only agree to float32 rounding.
SPECTRUM_TOL = 1e-6


# ---------------------------------------------------------------------------------------------
# The oracle (no layergrad code below this line until the tests)
# ---------------------------------------------------------------------------------------------
def oracle_text(record: dict) -> tuple[str, int]:
    """The base-mode text and the character where the response starts."""
    prompt = record["instruction"]
    if record.get("input", "") != "":
        prompt = prompt + "\n" + record["input"]
    return prompt + "\n" + record["output"], len(prompt) + 1


def oracle_tokens(tokenizer, record: dict) -> tuple[list[int], int]:
    """Token ids and ``n_prompt`` (index of the first response token)."""
    text, start = oracle_text(record)
    enc = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    n_prompt = next(k for k, (a, b) in enumerate(offsets) if a >= start and b > a)
    return ids, n_prompt


@dataclass
class Slice:
    """One expected row: how to get an (out x in) gradient from a parameter's ``.grad``."""

    layer: int
    role: str
    module: str  # expected ``module`` column
    param: str  # expected ``param`` column (None: not checked)
    weight: torch.nn.Parameter
    take: object  # grad -> (out, in) tensor
    uses: int = 1  # how many times the weight is applied per token (2 for a tied head)
    tied_with: str | None = None


def _rows(lo: int, hi: int):
    return lambda g: g[lo:hi]


def _cols_t(lo: int, hi: int):  # Conv1D: weight (in, out); output columns lo:hi, as (out, in)
    return lambda g: g[:, lo:hi].t()


def _rows_idx(idx: list[int]):
    index = torch.tensor(idx, dtype=torch.long)
    return lambda g: g.index_select(0, index)


_PLAIN = {  # module-path suffix inside a decoder layer -> role (nn.Linear, weight (out, in))
    "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
    "mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down",
}
_LAYER = re.compile(r"^(?P<stack>.*\.(?:layers|h))\.(?P<i>\d+)\.(?P<rest>.+)$")


def _layer_slices(model, mtype: str, layer: int, path: str, rest: str, module) -> list[Slice]:
    cfg = model.config
    w = module.weight
    p = f"{path}.weight"

    def one(role, take=lambda g: g):
        return [Slice(layer, role, path, p, w, take)]

    if mtype in ("llama", "qwen2", "gemma", "gemma2", "mistral"):
        return one(_PLAIN[rest]) if rest in _PLAIN else []
    if mtype == "phi3":
        if rest == "self_attn.qkv_proj":
            attn = model.get_submodule(path.rsplit(".", 1)[0])
            qpos = cfg.num_attention_heads * attn.head_dim  # Phi3Attention.forward: query_pos
            kv = attn.num_key_value_heads * attn.head_dim
            bounds = {"q": (0, qpos), "k": (qpos, qpos + kv), "v": (qpos + kv, qpos + 2 * kv)}
            assert qpos + 2 * kv == w.shape[0]
            return [Slice(layer, r, f"{path}[{r}]", p, w, _rows(*bounds[r])) for r in ("q", "k", "v")]
        if rest == "mlp.gate_up_proj":
            half = w.shape[0] // 2  # Phi3MLP.forward: gate, up = gate_up_proj(x).chunk(2, dim=-1)
            return [Slice(layer, "gate", f"{path}[gate]", p, w, _rows(0, half)),
                    Slice(layer, "up", f"{path}[up]", p, w, _rows(half, 2 * half))]
        return one({"self_attn.o_proj": "o", "mlp.down_proj": "down"}[rest]) if rest in ("self_attn.o_proj", "mlp.down_proj") else []
    if mtype == "gpt2":
        if rest == "attn.c_attn":
            n = module.nf // 3  # GPT2Attention.forward: c_attn(x).split(split_size = n_embd, dim=2)
            assert n == model.get_submodule(path.rsplit(".", 1)[0]).split_size
            return [Slice(layer, r, f"{path}[{r}]", p, w, _cols_t(i * n, (i + 1) * n)) for i, r in enumerate("qkv")]
        roles = {"attn.c_proj": "o", "mlp.c_fc": "up", "mlp.c_proj": "down"}
        return one(roles[rest], lambda g: g.t()) if rest in roles else []
    if mtype == "gpt_neox":
        if rest == "attention.query_key_value":
            hs = model.get_submodule(path.rsplit(".", 1)[0]).head_size
            rows = {r: [] for r in "qkv"}
            for c in range(w.shape[0]):  # view(..., n_heads, 3*hs).chunk(3, dim=-1)
                rows["qkv"[(c % (3 * hs)) // hs]].append(c)
            return [Slice(layer, r, f"{path}[{r}]", p, w, _rows_idx(rows[r])) for r in "qkv"]
        roles = {"attention.dense": "o", "mlp.dense_h_to_4h": "up", "mlp.dense_4h_to_h": "down"}
        return one(roles[rest]) if rest in roles else []
    raise AssertionError(f"no oracle for model_type {mtype}")


def oracle_slices(model, lm_head: bool = True) -> list[Slice]:
    """Every expected (layer, role) row of ``--modules all[,lm_head]``."""
    mtype = model.config.model_type
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    out = []
    for name, module in model.named_modules():
        m = _LAYER.match(name)
        if m and hasattr(module, "weight"):
            out += _layer_slices(model, mtype, int(m["i"]), name, m["rest"], module)
    if lm_head:
        head, emb = model.get_output_embeddings(), model.get_input_embeddings()
        tied = head.weight is emb.weight
        hp = names[id(head)]
        out.append(Slice(-1, "lm_head", hp, None, head.weight, lambda g: g, uses=2 if tied else 1,
                         tied_with=names[id(emb)] if tied else None))
    return out


def oracle_metrics(g: torch.Tensor, t_total: int) -> dict:
    """The seven metrics, written from their definitions on float64 singular values."""
    g = g.to(torch.float64)
    n_out, n_in = g.shape
    s = torch.linalg.svdvals(g)  # descending, min(out, in) values
    s1, tot = s[0].item(), s.sum().item()
    rank = min(t_total, n_in, n_out)
    p = s / tot
    ent = -sum(pi * math.log(pi) for pi in p.tolist() if pi > 0)
    return dict(
        nuclear=tot,
        spectral=s1,
        frobenius=math.sqrt((s**2).sum().item()),
        min_sigma=0.0 if rank < min(n_in, n_out) else s[-1].item(),
        top1_share=s1 / tot,
        effective_rank=math.exp(ent),
        stable_rank=(s**2).sum().item() / s1**2,
        rank=rank,
        s=s.numpy(),
    )


_SOFTMAX = F.softmax


def _softmax64(input, *args, **kwargs):
    """``F.softmax`` that keeps a float64 input in float64 when float32 is asked for."""
    if input.dtype == torch.float64:
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        args = tuple(torch.float64 if a is torch.float32 else a for a in args)
    return _SOFTMAX(input, *args, **kwargs)


@contextlib.contextmanager
def float64_softmax():
    """Transformers' eager attention with its softmax in float64 instead of float32 (see TOL)."""
    torch.nn.functional.softmax = _softmax64
    try:
        yield
    finally:
        torch.nn.functional.softmax = _SOFTMAX


@dataclass
class OracleExample:
    loss: float
    n_tokens: int
    n_prompt: int
    rows: dict = field(default_factory=dict)  # (layer, role) -> dict(module, param, out, in, tied_with, metrics)


def oracle_run(folder, records, slices_of=oracle_slices) -> list[OracleExample]:
    """The oracle over ``records``: its own model load, tokenisation, loss, autograd and metrics."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="eager").eval()
    for prm in model.parameters():
        prm.requires_grad_(True)
    slices = slices_of(model)
    result = []
    for rec in records:
        ids, n_prompt = oracle_tokens(tok, rec)
        T = len(ids)
        model.zero_grad(set_to_none=True)
        x = torch.tensor([ids])
        with contextlib.nullcontext() if model.config.model_type in STOCK_SOFTMAX else float64_softmax():
            logits = model(input_ids=x).logits[0].to(torch.float64)
            first = max(n_prompt, 1)
            loss = F.cross_entropy(logits[first - 1 : T - 1], x[0, first:T], reduction="mean")
            loss.backward()
        ex = OracleExample(loss=loss.item(), n_tokens=T, n_prompt=n_prompt)
        for sl in slices:
            g = sl.take(sl.weight.grad.detach())
            ex.rows[(sl.layer, sl.role)] = dict(module=sl.module, param=sl.param, out=g.shape[0], inn=g.shape[1],
                                                tied_with=sl.tied_with, m=oracle_metrics(g, T * sl.uses))
        result.append(ex)
    return result


# ---------------------------------------------------------------------------------------------
# Running the tool and reading its store (the only package calls)
# ---------------------------------------------------------------------------------------------
def run_tool(folder, data_json, out, modules="all,lm_head", extra=()):
    from layergrad.cli import main
    from layergrad.store import load_results

    code = main(["run", "--model", str(folder), "--data", str(data_json), "--out", str(out), "--modules", modules,
                 "--dtype", "fp64", "--stats-dtype", "float64", "--prompt-mode", "base", "--spectrum-k", "all",
                 "--no-progress", *extra])
    assert code == 0, f"layergrad run exited {code}"
    res = load_results(out)
    ex = res.examples.sort_values("order").reset_index(drop=True)
    assert list(ex["status"]) == ["ok"] * len(ex)
    return ex, res.modules


@dataclass
class Case:
    arch: str
    oracle: list
    examples: object
    modules: object
    tol: float  # metrics
    loss_tol: float


def _case(tmp_path_factory, tokenizer, arch, padded: bool):
    tmp = tmp_path_factory.mktemp(f"oracle-{arch}")
    folder = save_model(tmp, arch, tokenizer)
    data = write_json(tmp / "data.json", DATA)
    ex, mods = run_tool(folder, data, tmp / "out", extra=() if padded else ("--batch-size", "1"))
    return Case(arch, oracle_run(folder, DATA), ex, mods, (TOL_PADDED if padded else TOL)[arch],
                (LOSS_TOL_PADDED if padded else LOSS_TOL)[arch])


@pytest.fixture(scope="module", params=ARCH_IDS)
def case(request, tmp_path_factory, tokenizer):
    """The tool with the default batch size (all six records in one right-padded batch) and the oracle."""
    return _case(tmp_path_factory, tokenizer, request.param, padded=True)


@pytest.fixture(scope="module", params=ARCH_IDS)
def case_bs1(request, tmp_path_factory, tokenizer):
    """The tool with ``--batch-size 1`` (no padding: the oracle's shapes) and the oracle."""
    return _case(tmp_path_factory, tokenizer, request.param, padded=False)


def _by_example(c: Case):
    """[(oracle example, {(layer, role): tool row})] in example order."""
    assert len(c.examples) == len(c.oracle) == len(DATA)
    pairs = []
    for i, (o, rec) in enumerate(zip(c.oracle, DATA)):
        row = c.examples.iloc[i]
        assert row["output"] == rec["output"]
        got = c.modules[c.modules["id"] == row["id"]]
        keys = list(zip(got["layer"].astype(int), got["role"]))
        pairs.append((o, row, dict(zip(keys, (r for _, r in got.iterrows()))), keys))
    return pairs


def _close(a, b, tol, scale=None):
    return abs(a - b) <= tol * (abs(b) if scale is None else scale)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------
def check_examples(c: Case):
    bad = []
    for i, (o, row, _, _) in enumerate(_by_example(c)):
        if int(row["n_tokens"]) != o.n_tokens or int(row["n_prompt_tokens"]) != o.n_prompt:
            bad.append(f"example {i}: n_tokens/n_prompt {row['n_tokens']}/{row['n_prompt_tokens']} != oracle {o.n_tokens}/{o.n_prompt}")
        if not _close(float(row["loss"]), o.loss, c.loss_tol):
            bad.append(f"example {i}: loss {row['loss']!r} != oracle {o.loss!r} (rel {abs(row['loss'] - o.loss) / o.loss:.2e})")
    assert not bad, "\n".join(bad)


def check_rows(c: Case):
    bad = []
    for i, (o, _, got, keys) in enumerate(_by_example(c)):
        if len(keys) != len(set(keys)):
            bad.append(f"example {i}: duplicate (layer, role) rows {sorted(k for k in keys if keys.count(k) > 1)}")
        missing, extra = sorted(set(o.rows) - set(got)), sorted(set(got) - set(o.rows))
        if missing or extra:
            bad.append(f"example {i}: missing {missing}, extra {extra}")
        for key in sorted(set(o.rows) & set(got)):
            e, r = o.rows[key], got[key]
            if r["module"] != e["module"]:
                bad.append(f"example {i} {key}: module {r['module']!r} != {e['module']!r}")
            if e["param"] is not None and r["param"] != e["param"]:
                bad.append(f"example {i} {key}: param {r['param']!r} != {e['param']!r}")
            if (int(r["out_features"]), int(r["in_features"])) != (e["out"], e["inn"]):
                bad.append(f"example {i} {key}: shape {r['out_features']}x{r['in_features']} != {e['out']}x{e['inn']}")
    assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad[:40])


def check_metrics(c: Case):
    tol = c.tol
    bad, worst = [], {}
    for i, (o, _, got, _) in enumerate(_by_example(c)):
        for key in sorted(set(o.rows) & set(got)):
            m, r = o.rows[key]["m"], got[key]
            for name in METRICS:
                a, b = float(r[name]), m[name]
                scale = m["spectral"] if name == "min_sigma" else max(abs(b), 1e-300)
                err = abs(a - b) / scale
                worst[name] = max(worst.get(name, 0.0), err)
                if not err <= tol:
                    bad.append(f"example {i} {key} {o.rows[key]['module']}: {name} {a!r} != oracle {b!r} (rel {err:.2e})")
    assert not bad, f"{len(bad)} values off by more than {tol:g} (worst per metric {worst}):\n" + "\n".join(bad[:40])


def check_rank_spectrum(c: Case):
    bad = []
    for i, (o, _, got, _) in enumerate(_by_example(c)):
        for key in sorted(set(o.rows) & set(got)):
            m, r = o.rows[key]["m"], got[key]
            where = f"example {i} (T={o.n_tokens}) {key} {o.rows[key]['module']}"
            if int(r["rank"]) != m["rank"]:
                bad.append(f"{where}: rank {r['rank']} != min(T_total, in, out) = {m['rank']}")
            if m["rank"] < min(o.rows[key]["out"], o.rows[key]["inn"]) and float(r["min_sigma"]) != 0.0:
                bad.append(f"{where}: min_sigma {r['min_sigma']!r} is not exactly 0 though min(T_total, in, out) = "
                           f"{m['rank']} < min(in, out)")
            spec = np.asarray(r["spectrum"], dtype=np.float64)
            if len(spec) > m["rank"]:
                bad.append(f"{where}: spectrum has {len(spec)} values > rank {m['rank']}")
                continue
            s, s1 = m["s"], m["spectral"]
            if np.any(np.diff(spec) > SPECTRUM_TOL * s1):
                bad.append(f"{where}: spectrum not descending")
            if not np.allclose(spec, s[: len(spec)], rtol=SPECTRUM_TOL, atol=SPECTRUM_TOL * s1):
                bad.append(f"{where}: spectrum differs from the oracle's (max abs diff {np.max(np.abs(spec - s[:len(spec)])):.3e}, s1 {s1:.3e})")
            if len(s) > len(spec) and s[len(spec)] > SPECTRUM_TOL * s1:
                bad.append(f"{where}: spectrum stops after {len(spec)} values but sigma_{len(spec) + 1} = {s[len(spec)]:.3e} (s1 {s1:.3e})")
    assert not bad, f"{len(bad)} problems:\n" + "\n".join(bad[:40])


def check_lm_head(c: Case):
    assert "tied_with" in c.modules.columns, "no tied_with column in the module rows"
    bad = []
    for i, (o, _, got, _) in enumerate(_by_example(c)):
        e, r = o.rows[(-1, "lm_head")], got.get((-1, "lm_head"))
        if r is None:
            bad.append(f"example {i}: no lm_head row")
            continue
        tw = r["tied_with"]
        tw = None if tw is None or (isinstance(tw, float) and math.isnan(tw)) else tw
        if tw != e["tied_with"]:
            bad.append(f"example {i}: tied_with {tw!r} != {e['tied_with']!r}")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
def test_loss_and_tokens(case):
    """Loss within LOSS_TOL[arch] relative; n_tokens and n_prompt_tokens as the oracle's own tokenisation."""
    check_examples(case)


def test_rows_are_the_roles(case):
    """Per example, the (layer, role) rows are exactly the oracle's (fused matrices split into roles,
    one lm_head row at layer -1), with the contract's module/param names and slice shapes."""
    check_rows(case)


def test_metrics_match_oracle(case):
    """Every metric of every row within TOL[arch] of the oracle (min_sigma relative to s_1)."""
    check_metrics(case)


def test_rank_and_spectrum(case):
    """rank = min(T_total, in, out); --spectrum-k all stores the singular values, at most rank of them."""
    check_rank_spectrum(case)


def test_lm_head_tied_with(case):
    """tied_with names the input embedding's module when the head's weight is tied to it, else null."""
    check_lm_head(case)


def test_batch_size_one_loss(case_bs1):
    """--batch-size 1 (no padding): loss and token counts as with padding."""
    check_examples(case_bs1)


def test_batch_size_one_metrics(case_bs1):
    """--batch-size 1 (no padding): rows, metrics, rank and spectrum as with padding."""
    check_rows(case_bs1)
    check_metrics(case_bs1)
    check_rank_spectrum(case_bs1)


def qkv_whole_slices(model) -> list[Slice]:
    """Phi-3's fused ``qkv_proj`` as one (layer, "qkv") row each: the whole weight gradient."""
    out = []
    for name, module in model.named_modules():
        m = _LAYER.match(name)
        if m and m["rest"] == "self_attn.qkv_proj":
            out.append(Slice(int(m["i"]), "qkv", name, f"{name}.weight", module.weight, lambda g: g))
    assert len(out) == model.config.num_hidden_layers
    return out


def test_phi3_qkv_role_is_the_whole_fused_matrix(tmp_path, tokenizer):
    """--modules qkv on Phi-3: one row per layer, role qkv, module = the qkv_proj path (no suffix),
    out_features = the whole fused size (32 = 16 q + 8 k + 8 v rows), statistics of the whole fused gradient."""
    folder = save_model(tmp_path, "phi3", tokenizer)
    data = write_json(tmp_path / "data.json", DATA)
    ex, mods = run_tool(folder, data, tmp_path / "out", modules="qkv")
    c = Case("phi3", oracle_run(folder, DATA, slices_of=qkv_whole_slices), ex, mods, TOL["phi3"], LOSS_TOL["phi3"])
    assert all(r["out"] == 32 for o in c.oracle for r in o.rows.values())
    check_examples(c)
    check_rows(c)
    check_metrics(c)
    check_rank_spectrum(c)
