"""LayerGradCallback inside transformers.Trainer: training unchanged to the bit, statistics equal to
`layergrad run` on the weights of the recorded step (float64), with and without gradient accumulation
and gradient checkpointing; bad input refused clearly."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from conftest import RECORDS, write_json

transformers = pytest.importorskip("transformers")
from transformers import TrainerCallback  # noqa: E402

from layergrad.integrations import LayerGradCallback  # noqa: E402
from layergrad.store import load_results  # noqa: E402
from helpers import items, loss64, train  # noqa: E402







class Snapshot(TrainerCallback):
    """Keeps the weights at the start of optimizer step ``at`` (= after ``at`` updates)."""

    def __init__(self, at: int):
        self.at, self.state = at, None

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step == self.at:
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}






@pytest.mark.parametrize("ga", [1, 2], ids=["no-accumulation", "accumulation-2"])
def test_training_is_bitwise_unchanged(tmp_path, tokenizer, ga):
    plain, plain_losses, data = train(tmp_path / "a", tokenizer, ga=ga)
    cb = LayerGradCallback(tmp_path / "rec", every_n_steps=1, modules="all", probe=str(write_json(tmp_path / "p.json", RECORDS[:2])))
    timed, timed_losses, _ = train(tmp_path / "b", tokenizer, ga=ga, callbacks=[cb])
    assert plain_losses.shape == timed_losses.shape and len(plain_losses) == 4 * ga
    assert torch.equal(plain_losses, timed_losses)  # every micro-batch's loss, to the bit
    a, b = plain.state_dict(), timed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(p.requires_grad for p in timed.parameters())
    res = load_results(tmp_path / "rec")
    train_rows = res.examples[res.examples["group"] == "train"]
    assert sorted(set(train_rows["step"])) == [0, 1, 2, 3]
    # 11 examples, batches of 2: with accumulation 2 an epoch is 3 steps, its last of 3 examples
    assert train_rows.groupby("step").size().tolist() == ([2, 2, 2, 2] if ga == 1 else [4, 4, 3, 4])
    assert set(res.examples[res.examples["group"] == "probe"]["step"]) == {0, 1, 2, 3}
    assert (res.examples["status"] == "ok").all() and len(res.modules) == len(res.examples) * len(res.manifest["module_names"])
    # the trainer's loss with num_items_in_batch: sum / N, then nothing more (no accumulation division)
    note = json.loads((tmp_path / "rec" / "training.json").read_text())
    assert list(note["reductions"]) == ["sum/num_items_in_batch"]
    assert note["trainer_multipliers"] == pytest.approx([1.0], rel=1e-5)


def _token_id(tokenizer, it) -> str:
    # the callback's content id, written out here: sha256 of [real tokens, labels]
    return hashlib.sha256(json.dumps([it["input_ids"], it["labels"]]).encode()).hexdigest()[:16]


@pytest.mark.parametrize("batch,ga,checkpointing,hf_loss", [
    (1, 1, None, False), (1, 2, None, False), (1, 2, "non-reentrant", False), (1, 1, "reentrant", False),
    (2, 2, None, False), (2, 1, None, True)],
    ids=["plain", "accumulation", "checkpointing", "reentrant-checkpointing", "padded-batches", "hf-float32-loss"])
def test_statistics_equal_layergrad_run_at_the_step(tmp_path, tokenizer, batch, ga, checkpointing, hf_loss):
    """Rows recorded at step 2 equal `layergrad run` on the model saved at step 2, in float64: to 1e-6
    relative for every metric and singular value when both see one example a batch.

    The tiny GPT-2 (Conv1D, fused c_attn, a tied head) in sdpa attention: float64 throughout. (A Llama is
    not: its RMSNorm works in float32, and float32 rounding of the step's gradient, which is the
    example's own times ``n_i / N``, is not scale-equivariant: ~1e-8 of s_1 apart.) Hugging Face's own causal-LM
    loss casts the logits to float32 (a float64 model's too), so the trainer's gradient itself carries
    float32 rounding (``hf_loss``): also 1e-6 * s_1. Otherwise the model's loss is replaced by the same
    reduction in float64 (:func:`loss64`), and attention is sdpa (float64)."""
    from layergrad.config import RunConfig
    from layergrad.run import engine

    snap = Snapshot(2)
    cb = LayerGradCallback(tmp_path / "rec", every_n_steps=2, modules="all", stats_dtype="float64", spectrum_k=None)
    model, _, data = train(tmp_path, tokenizer, dtype="float64", ga=ga, steps=3, callbacks=[snap, cb],
                           checkpointing=checkpointing, loss=None if hf_loss else loss64, attn="sdpa", batch=batch,
                           arch="gpt2")
    model.load_state_dict(snap.state)
    folder = tmp_path / "step-2"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    from transformers import AutoModelForCausalLM

    from layergrad.inputs.models import LoadedModel

    # sdpa: eager attention takes its softmax in float32 even in a float64 model, and its rounding then depends on
    # the padded length, which differs between the trainer's batches and the run's
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="sdpa")
    cfg = RunConfig(model=str(folder), data=[str(data)], out=str(tmp_path / "run"), progress=False, dtype="float64",
                    stats_dtype="float64", spectrum_k=None, modules="all", prompt_mode="base", device="cpu",
                    batch_size=1)
    engine.run(cfg, loaded=LoadedModel(model=saved, tokenizer=tokenizer, source="test", path=str(folder),
                                       fingerprint="step-2", dtype="float64"))
    ref = load_results(cfg.out)
    by_token = {_token_id(tokenizer, it): it["record"] for it in items(tokenizer, data)}
    rec = load_results(tmp_path / "rec")
    at2 = rec.examples[rec.examples["step"] == 2]
    assert len(at2) == batch * ga - (batch == 2 and ga == 2) and set(rec.examples["step"]) == {0, 2}
    metrics = ["nuclear", "spectral", "frobenius", "min_sigma", "top1_share", "effective_rank", "stable_rank"]
    for row in at2.itertuples():
        want_id = by_token[row.example_id]
        want = ref.examples.set_index("id").loc[want_id]
        assert row.loss == pytest.approx(want["loss"], rel=1e-12)  # measured in float64 from the logits either way
        assert row.n_response_tokens == want["n_response_tokens"]
        got = rec.modules[rec.modules["id"] == row.id].set_index("module")
        exp = ref.modules[ref.modules["id"] == want_id].set_index("module")
        assert list(got.index) == list(exp.index) and len(got) > 0
        for m in got.index:
            s1 = float(exp.loc[m, "spectral"])
            if not hf_loss:
                # 1e-6 relative; singular values that are zero (rank-deficient) agree to float64 rounding, 1e-12 * s_1
                np.testing.assert_allclose(got.loc[m, metrics].to_numpy(float), exp.loc[m, metrics].to_numpy(float),
                                           rtol=1e-6, atol=1e-12 * s1)
                np.testing.assert_allclose(np.asarray(got.loc[m, "spectrum"]), np.asarray(exp.loc[m, "spectrum"]),
                                           rtol=1e-6, atol=1e-12 * s1)
            else:
                np.testing.assert_allclose(np.asarray(got.loc[m, "spectrum"]), np.asarray(exp.loc[m, "spectrum"]), rtol=0, atol=1e-6 * s1)


def test_callback_refuses_modules_the_model_lacks(tmp_path, tokenizer):
    from layergrad.inputs.targets import SelectionError

    cb = LayerGradCallback(tmp_path / "rec", every_n_steps=1, modules="qkv")
    with pytest.raises(SelectionError, match=r"no module of LlamaForCausalLM matches .*'qkv'.*roles present: .*q"):
        train(tmp_path, tokenizer, steps=1, callbacks=[cb])
    assert not (tmp_path / "rec").exists()  # refused before any step


def test_callback_refuses_bad_options_and_fsdp(tmp_path):
    from layergrad.errors import ConfigError
    from layergrad.integrations.trainer import UnsupportedTraining, _refuse_unsupported

    with pytest.raises(ConfigError, match="every_n_steps must be an integer >= 1, got 0"):
        LayerGradCallback(tmp_path, every_n_steps=0)
    with pytest.raises(ConfigError, match="stats_dtype 'float16'"):
        LayerGradCallback(tmp_path, stats_dtype="float16")

    class Args:
        fsdp = ["full_shard"]

    with pytest.raises(UnsupportedTraining, match="does not support FSDP"):
        _refuse_unsupported(Args())


def test_label_smoothing_is_refused_not_mismeasured(tmp_path, tokenizer):
    from layergrad.integrations import rescale

    logits = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[-100, 1, 2, -100, -100], [-100, -100, 4, 5, 6]])
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), label_smoothing=0.1)
    (g,) = torch.autograd.grad(ce, logits)
    with pytest.raises(rescale.RescaleError, match="label smoothing"):
        rescale.check_fit(rescale.fit_alpha(g, logits, labels), torch.float64)
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), reduction="sum") * 0.25
    (g,) = torch.autograd.grad(plain, logits)
    fit = rescale.fit_alpha(g, logits, labels)
    rescale.check_fit(fit, torch.float64)
    assert fit.alpha == pytest.approx(0.25, rel=1e-12)
    assert rescale.example_scales(fit, labels).tolist() == pytest.approx([1 / (0.25 * 2), 1 / (0.25 * 3)], rel=1e-12)


def test_fused_head_rescaling_reads_every_multiplier_and_refuses_dft():
    """TRL's fused head: loss = -sum(lp) / N times the trainer's multipliers (here an fp16 loss scale of 1024 and a
    world size of 2); alpha is read off the log-probabilities' gradient exactly; DFT's p-weighted loss is refused."""
    from layergrad.integrations import rescale

    labels = torch.tensor([[-100, 1, 2, -100, -100], [-100, -100, 4, 5, 6]])
    mask = labels[:, 1:] != -100
    lp = (-torch.rand(2, 4, dtype=torch.float64) * 3).masked_fill(~mask, 0.0).requires_grad_(True)
    loss = -lp.sum() / 5 * 1024 * 2
    (g,) = torch.autograd.grad(loss, lp)
    fit = rescale.fit_alpha_logprobs(g, labels)
    rescale.check_fit(fit, torch.float64)
    assert fit.alpha == pytest.approx(1024 * 2 / 5, rel=1e-12) and fit.residual < 1e-15
    assert rescale.own_losses_from_logprobs(lp, labels).tolist() == pytest.approx(
        [-float(lp[0, :2].sum()) / 2, -float(lp[1, 1:].sum()) / 3], rel=1e-12)
    dft = -(lp * lp.detach().exp()).sum() / 5
    (g,) = torch.autograd.grad(dft, lp)
    with pytest.raises(rescale.RescaleError, match="loss_type='dft'"):
        rescale.check_fit(rescale.fit_alpha_logprobs(g, labels), torch.float64)


def test_packed_rows_refused_padded_rows_not():
    from layergrad.integrations.trainer import UnsupportedTraining, _refuse_packed

    left_padded = {"position_ids": torch.tensor([[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]),
                   "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])}
    _refuse_packed(left_padded)  # repeated positions only in the padding
    _refuse_packed({"position_ids": torch.arange(6).view(1, 6)})
    for packed in ({"position_ids": torch.tensor([[0, 1, 2, 0, 1, 2]])},
                   {"cu_seq_lens_q": torch.tensor([0, 3, 6], dtype=torch.int32)}):
        with pytest.raises(UnsupportedTraining, match=r"padding_free=False, packing=False"):
            _refuse_packed(packed)
