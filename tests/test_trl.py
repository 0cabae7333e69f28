"""LayerGradCallback inside TRL's SFTTrainer (fused LM head, completion-only and assistant-only losses):
training unchanged to the bit, rows equal to `layergrad run` on the saved step-2 weights (same text, same
masked tokens); padding-free batches refused; the live summaries in a TensorBoard event file equal the
stored rows' means."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from conftest import make_model, make_tokenizer, write_json

trl = pytest.importorskip("trl", reason="TRL is the optional extra layergrad[train]")
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from helpers import MANY, items  # noqa: E402
from layergrad.integrations import LayerGradCallback  # noqa: E402
from layergrad.integrations.trainer import UnsupportedTraining  # noqa: E402
from layergrad.store import load_results  # noqa: E402

# Assistant turns inside {% generation %} (TRL's assistant_only_loss); the end-of-turn token is outside,
# as in layergrad's --turns all, so both mask the same tokens.
GEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATS = [
    {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": f"What is {a} plus {b}?"}, {"role": "assistant", "content": f"Step 1: {a} + {b}."},
                  {"role": "user", "content": "And the answer?"}, {"role": "assistant", "content": f"The answer is {a + b}."}]}
    for a, b in [(12, 30), (3, 4), (7, 8), (20, 22), (5, 5), (9, 1)]
]


class Snapshot(TrainerCallback):
    """Keeps the weights at the start of optimizer step ``at`` (= after ``at`` updates)."""

    def __init__(self, at: int):
        self.at, self.state = at, None

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step == self.at:
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}


def sft(tmp_path, tok, rows, *, callbacks=(), steps=3, arch="gpt2", dtype="float64", attn="sdpa", **config):
    """A tiny SFTTrainer run (no dropout); the model, every micro-batch's loss, the trainer.

    bf16 off unless asked: TRL's configs turn it on by default (then the CPU trains under bf16 autocast)."""
    from trl import SFTConfig, SFTTrainer

    model = make_model(arch, len(tok), dtype=dtype)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.set_attn_implementation(attn)  # sdpa: float64 softmax in a float64 model (eager's is float32)
    model.train()
    losses = []
    hook = model.register_forward_hook(lambda m, a, o: losses.append(o["loss"].detach().clone()) if m.training else None)
    args = SFTConfig(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=2, max_steps=steps, learning_rate=5e-3,
                     logging_steps=1, save_strategy="no", report_to=config.pop("report_to", []), seed=0, use_cpu=True,
                     dataloader_num_workers=0, disable_tqdm=True, bf16=config.pop("bf16", False), **config)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=list(callbacks))
    trainer.train()
    hook.remove()
    return model, torch.stack(losses), trainer


def cid(ids, labels) -> str:
    # the callback's content id, written out here: sha256 of [real tokens, labels]
    return hashlib.sha256(json.dumps([list(ids), list(labels)]).encode()).hexdigest()[:16]


def layergrad_run(tmp_path, model, snap, tok, data, **cfg):
    """`layergrad run` (the engine) on ``model`` with the snapshot's weights, saved and reloaded in float64."""
    from transformers import AutoModelForCausalLM

    from layergrad.config import RunConfig
    from layergrad.inputs.models import LoadedModel
    from layergrad.run import engine

    model.load_state_dict(snap.state)
    folder = tmp_path / "step-2"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="sdpa")
    run = RunConfig(model=str(folder), data=[str(data)], out=str(tmp_path / "run"), progress=False, dtype="float64",
                    stats_dtype="float64", spectrum_k=None, modules="all", device="cpu", batch_size=1, **cfg)
    engine.run(run, loaded=LoadedModel(model=saved, tokenizer=tok, source="test", path=str(folder), fingerprint="step-2",
                                       dtype="float64"))
    return load_results(run.out)


def assert_rows_equal(rec, ref, want_of: dict, step: int = 2) -> int:
    """Every row recorded at ``step`` equals the run's row of the same example: loss to 1e-6 relative, every singular
    value to 1e-6 * s_1 (the fused head takes its softmax in float32, so the trainer's gradient carries float32
    rounding), every metric to 1e-6 relative where s_1 is not tiny."""
    at = rec.examples[rec.examples["step"] == step]
    for row in at.itertuples():
        want_id = want_of[row.example_id]
        want = ref.examples.set_index("id").loc[want_id]
        assert row.loss == pytest.approx(want["loss"], rel=1e-6)
        assert row.n_response_tokens == want["n_response_tokens"]
        got = rec.modules[rec.modules["id"] == row.id].set_index("module")
        exp = ref.modules[ref.modules["id"] == want_id].set_index("module")
        assert list(got.index) == list(exp.index) and len(got) > 0
        for m in got.index:
            s1 = float(exp.loc[m, "spectral"])
            np.testing.assert_allclose(np.asarray(got.loc[m, "spectrum"]), np.asarray(exp.loc[m, "spectrum"]), rtol=0, atol=1e-6 * s1)
            for k in ("nuclear", "spectral", "frobenius"):
                assert got.loc[m, k] == pytest.approx(exp.loc[m, k], rel=1e-6, abs=1e-6 * s1), (m, k)
    return len(at)


def test_completion_only_loss_unchanged_and_equal_to_layergrad_run(tmp_path):
    """Prompt-completion data, completion_only_loss: losses and weights bitwise those of the run without the
    callback; the rows of step 2 equal `layergrad run` on the step-2 weights of the same text (TRL's prompt +
    completion + EOS is layergrad's base text `instruction + "\\n" + output`), the same masked tokens."""
    tok = make_tokenizer()
    recs = [dict(r, output=r["output"] + tok.eos_token) for r in MANY[:8]]
    rows = [{"prompt": r["instruction"] + "\n", "completion": r["output"]} for r in recs]  # EOS already there: TRL adds none
    plain, plain_losses, _ = sft(tmp_path / "a", tok, rows, completion_only_loss=True)
    snap = Snapshot(2)
    cb = LayerGradCallback(tmp_path / "rec", every_n_steps=2, modules="all", stats_dtype="float64", spectrum_k=None)
    model, losses, trainer = sft(tmp_path / "b", tok, rows, callbacks=[snap, cb], completion_only_loss=True)
    assert len(losses) == 3 and torch.equal(plain_losses, losses)
    a, b = plain.state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ds = trainer.train_dataset  # TRL's tokens and labels: -100 on the prompt (the trainer's loss tokens)
    data = write_json(tmp_path / "d.json", recs)
    ref = layergrad_run(tmp_path, model, snap, tok, data, prompt_mode="base")
    want_of = {cid(it["input_ids"], it["labels"]): it["record"] for it in items(tok, data)}
    trl_ids = {cid(r["input_ids"], r["labels"]) for r in ds}
    assert trl_ids == set(want_of)  # same tokens and the same masked tokens, example by example
    rec = load_results(tmp_path / "rec")
    assert set(rec.examples["step"]) == {0, 2} and (rec.examples["status"] == "ok").all()
    assert assert_rows_equal(rec, ref, want_of) == 2
    note = json.loads((tmp_path / "rec" / "training.json").read_text())
    # TRL's loss: sum over the batch's label tokens / their number, nothing more (alpha * n = 1)
    assert note["trainer_multipliers"] == pytest.approx([1.0], rel=1e-6)


def test_assistant_only_loss_on_messages_equal_to_layergrad_run_all_turns(tmp_path):
    """`messages` data, assistant_only_loss (two assistant turns per example): the recorded response tokens are the
    trainer's label tokens, and the rows equal `layergrad run --prompt-mode chat --turns all` (tokens after the last
    turn's content, which TRL keeps and layergrad drops, carry no loss term and so change no gradient)."""
    tok = make_tokenizer(GEN_TEMPLATE, bos=False)
    snap = Snapshot(2)
    cb = LayerGradCallback(tmp_path / "rec", every_n_steps=2, modules="all", stats_dtype="float64", spectrum_k=None)
    model, _, trainer = sft(tmp_path, tok, CHATS, callbacks=[snap, cb], assistant_only_loss=True)
    ds = trainer.train_dataset
    by_cid = {cid(r["input_ids"], r["labels"]): r for r in ds}
    rec = load_results(tmp_path / "rec")
    assert set(rec.examples["example_id"]) <= set(by_cid) and len(rec.examples) == 4
    for row in rec.examples.itertuples():
        labels = by_cid[row.example_id]["labels"]
        assert row.n_response_tokens == sum(x != -100 for x in labels[1:])
        starts = [j for j in range(1, len(labels)) if labels[j] != -100 and labels[j - 1] == -100]
        assert len(starts) == 2  # two assistant turns, masked apart
    from layergrad.inputs.data import load_examples
    from layergrad.inputs.prompting import encode

    data = write_json(tmp_path / "d.json", CHATS)
    exs, _ = load_examples([str(data)])
    key = {}
    for ex in exs:  # the loss terms (position, token) identify an example on both sides
        enc = encode(ex, tok, "chat", 1024, turns="all")
        key[tuple((j, enc.input_ids[j]) for j in enc.loss_targets())] = ex.id
    want_of = {c: key[tuple((j, x) for j, x in enumerate(r["labels"]) if j > 0 and x != -100)] for c, r in by_cid.items()}
    ref = layergrad_run(tmp_path, model, snap, tok, data, prompt_mode="chat", turns="all")
    assert assert_rows_equal(rec, ref, want_of) == 2


@pytest.mark.parametrize("option", [{"padding_free": True, "max_length": None}, {"packing": True}], ids=["padding-free", "packing"])
def test_padding_free_and_packing_are_refused_naming_the_option(tmp_path, option):
    tok = make_tokenizer()
    rows = [{"prompt": r["instruction"] + "\n", "completion": r["output"]} for r in MANY[:4]]
    cb = LayerGradCallback(tmp_path / "rec", every_n_steps=1, modules="attn")
    with pytest.raises(UnsupportedTraining, match=r"(padding_free|packing)=True puts several examples.*padding_free=False, packing=False"):
        sft(tmp_path, tok, rows, callbacks=[cb], steps=1, dtype="float32", **option)
    assert not (tmp_path / "rec").exists()  # refused before the first step


def test_live_summaries_in_the_tensorboard_event_file(tmp_path, monkeypatch):
    """`report_to="tensorboard"`: at the recorded steps the event file holds layergrad/<metric>/<role>/<third>, equal
    to the mean over that step's stored rows of the role in the third's layers (computed here from the store)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from layergrad.store.rows import depth_thirds

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    tok = make_tokenizer()
    rows = [{"prompt": r["instruction"] + "\n", "completion": r["output"]} for r in MANY[:8]]
    cb = LayerGradCallback(tmp_path / "rec", every_n_steps=2, modules="attn", log_metrics=("nuclear", "effective_rank", "top1_share"))
    sft(tmp_path, tok, rows, callbacks=[cb], steps=3, arch="llama", dtype="float32", attn="eager", report_to=["tensorboard"])
    acc = EventAccumulator(str(tmp_path / "tb")).Reload()
    tags = acc.Tags()["scalars"]
    rec = load_results(tmp_path / "rec")
    thirds = depth_thirds(rec.manifest["n_layers"])
    mods = rec.modules.assign(third=rec.modules["layer"].map(thirds)).merge(rec.examples[["id", "step"]], on="id")
    n_checked = 0
    for metric in ("nuclear", "effective_rank", "top1_share"):
        for role in ("q", "k", "v", "o"):
            for third in ("early", "middle", "late"):
                tag = next(t for t in tags if t.endswith(f"layergrad/{metric}/{role}/{third}"))
                events = {e.step: e.value for e in acc.Scalars(tag)}
                # logged at the end of the recorded step s: trainer step s + 1
                assert sorted(events) == [1, 3]
                for s in (0, 2):
                    cells = mods[(mods.step == s) & (mods.role == role) & (mods.third == third)][metric]
                    assert events[s + 1] == pytest.approx(cells.mean(), rel=1e-6)  # TensorBoard stores float32
                    n_checked += 1
    loss_tag = next(t for t in tags if t.endswith("layergrad/loss"))
    assert {e.step: e.value for e in acc.Scalars(loss_tag)}[3] == pytest.approx(rec.examples[rec.examples.step == 2]["loss"].mean(), rel=1e-6)
    assert any(t.endswith("loss") and "layergrad" not in t for t in tags)  # beside the trainer's own loss
    assert n_checked == 72


def test_log_metrics_validated():
    from layergrad.errors import ConfigError

    with pytest.raises(ConfigError, match=r"log_metrics \['nuclar'\]: choose among nuclear"):
        LayerGradCallback("x", log_metrics=("nuclar",))


def test_bf16_autocast_within_the_stated_error_of_float32(tmp_path):
    """TRL's default bf16 (CPU autocast) against float32, the same weights (step 0), the same examples: the stored
    values differ by bf16 rounding of the step's own activations and gradients (docs/training.md states the figures
    of this setting: median ~0.5%, at most ~5% for a spectral norm); the rescaling itself adds nothing."""
    tok = make_tokenizer()
    rows = [{"prompt": r["instruction"] + "\n", "completion": r["output"]} for r in MANY[:8]]
    res = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        cb = LayerGradCallback(tmp_path / name, every_n_steps=1, modules="all", stats_dtype="float64", spectrum_k=None)
        sft(tmp_path / f"t-{name}", tok, rows, callbacks=[cb], steps=1, arch="llama", dtype="float32", attn="eager",
            completion_only_loss=True, bf16=bf16)
        res[name] = load_results(tmp_path / name)
    a, b = (res[n].modules.set_index(["id", "module"]).sort_index() for n in ("bf16", "fp32"))
    assert list(a.index) == list(b.index) and len(a) == 2 * 21
    assert json.loads((tmp_path / "bf16" / "manifest.json").read_text())["recorded"]["bf16"] is True
    for metric, worst in (("nuclear", 0.05), ("frobenius", 0.05), ("spectral", 0.08), ("effective_rank", 0.05)):
        rel = np.abs(a[metric].to_numpy(float) / b[metric].to_numpy(float) - 1)
        assert 1e-5 < np.median(rel) < 0.01 and rel.max() < worst, (metric, np.median(rel), rel.max())  # bf16 was on
    la, lb = (res[n].examples.set_index("id").sort_index()["loss"].to_numpy(float) for n in ("bf16", "fp32"))
    assert np.abs(la / lb - 1).max() < 5e-3
