"""Helpers shared by several test files (no test file imports another): tiny runs, oracles,
comparisons of stored results, data catalogues. Fixtures stay in conftest.py."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import RECORDS, make_model, make_tokenizer, write_json
from layergrad.cli.report import add_parser
from layergrad.config import RunConfig
from layergrad.inputs.data import load_examples
from layergrad.inputs.models import LoadedModel
from layergrad.inputs.prompting import encode
from layergrad.measure import oracle
from layergrad.run import engine
from layergrad.store import RunStore, load_results
from transformers import Trainer, TrainingArguments


ALPACA = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Translate to French.", "input": "good morning", "output": "bonjour"},
    {"instruction": "Name a colour.", "output": "blue"},  # no input field at all
]


def write(path: Path, content) -> Path:
    """Write bytes, text, or (for .json) a JSON value to ``path``."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


CHAT_PROBLEMS = [
    ("not a list", {"messages": "hi"}, "messages", "must be a list"),
    ("turn not an object", {"messages": ["hi", {"role": "assistant", "content": "x"}]},
     "messages[0]", "must be an object"),
    ("turn without content", {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
     "messages[0].content", "must be a string"),
    ("role not a string", {"messages": [{"role": 1, "content": "q"}, {"role": "assistant", "content": "x"}]},
     "messages[0].role", "must be a string"),
    ("no assistant turn", {"messages": [{"role": "user", "content": "q"}]},
     "messages", "no assistant turn"),
    ("empty list", {"messages": []}, "messages", "no assistant turn"),
    ("ends with a user turn", {"messages": [{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": "a"},
                                            {"role": "user", "content": "q2"}]},
     "messages", "after the last assistant turn"),
    ("empty response", {"messages": [{"role": "user", "content": "q"},
                                     {"role": "assistant", "content": "  \n"}]},
     "messages[1].content", "non-empty"),
]


RECORD_PROBLEMS = [
    ("record not an object", [ALPACA[0], ["a", "b"]], 1, None, "must be an object, found a list"),
    ("missing instruction", [{"output": "x"}], 0, "instruction", "missing"),
    ("instruction not a string", [{"instruction": 3, "output": "x"}], 0, "instruction",
     "must be a string, found a number"),
    ("missing output", [ALPACA[0], {"instruction": "x", "input": ""}], 1, "output", "missing"),
    ("null output", [{"instruction": "x", "output": None}], 0, "output", "missing"),
    ("output not a string", [{"instruction": "x", "output": ["5"]}], 0, "output",
     "must be a string, found a list"),
    ("input not a string", [{"instruction": "x", "input": {"a": 1}, "output": "y"}], 0, "input",
     "must be a string, found an object"),
    ("empty output", [ALPACA[0], ALPACA[1], {"instruction": "x", "output": ""}], 2, "output",
     "non-empty"),
    ("whitespace output", [{"instruction": "x", "output": " \n\t"}], 0, "output", "non-empty"),
    ("id a float", [{"id": 1.5, "instruction": "x", "output": "y"}], 0, "id",
     "string or an integer"),
    ("id a boolean", [{"id": True, "instruction": "x", "output": "y"}], 0, "id",
     "string or an integer"),
    ("id empty", [{"id": " ", "instruction": "x", "output": "y"}], 0, "id", "must not be empty"),
]


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


FILE_PROBLEMS = [
    ("not valid JSON", "data.json", '[\n {"instruction": "x",\n  "output": }\n]',
     "not valid JSON at line 3, column 13"),
    ("JSONL in a .json file", "data.json", jsonl(ALPACA[:2]), "name the file .jsonl"),
    ("invalid UTF-8", "data.json", b'[{"instruction": "caf\xe9", "output": "x"}]',
     "invalid UTF-8 at byte offset 21 (line 1)"),  # the offset of \xe9
    ("top level an object", "data.json", {"data": ALPACA}, "top level is an object with keys 'data'"),
    ("top level a string", "data.json", '"hello"', "top level is a string"),
    ("empty file", "data.json", "  \n", "no records"),
    ("empty list", "data.json", [], "no records"),
    ("JSONL with only blank lines", "data.jsonl", "\n\n  \n", "no records"),
    ("CSV with a header only", "data.csv", "instruction,output\n", "no records"),  # CSV is read (tests/test_datasets_input.py)
    ("unsupported suffix", "data.txt", "instruction,output\n", "unsupported file type '.txt'"),
]


def report_parser():
    p = argparse.ArgumentParser(prog="layergrad")
    add_parser(p.add_subparsers(dest="command"))
    return p


ROLE_PATHS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def make_run(path, values, roles=("q", "o"), *, n_layers=None, lengths=None, not_ok=(), model="tiny-llama",
             prompt_mode="base", data=("fast.json",), cosine=None, manifest_extra=None, fill=True, seed=0, groups=None,
             instructions=None, ids=None, loss=None) -> Path:
    """Write a run directory. ``values``: metric -> (n, R, L) array (NaN = stored NaN, None = no row).

    Metrics not given are filled with positive random numbers when ``fill`` (else stored as null).
    ``not_ok``: (status, reason) per extra example that is not ok. ``cosine``: list of COSINE rows.
    ``groups``: per-example value of the examples' ``group`` column (default null). ``instructions``,
    ``ids``, ``loss``: per-example values (default ``instruction {i}``, ``e{i}``, 1.0: runs made with the defaults
    pair example i with example i, as two response styles of one dataset do).
    """
    path = Path(path)
    first = next(iter(values.values()))
    n, R, L = first.shape
    assert R == len(roles)
    n_layers = L if n_layers is None else n_layers
    rng = np.random.default_rng(seed)
    lengths = np.full(n, 50) if lengths is None else np.asarray(lengths)
    modules = [f"model.layers.{l}.{ROLE_PATHS.get(r, r)}" for l in range(L) for r in roles]
    manifest = {"model": model, "model_fingerprint": f"fp-{model}", "dtype": "float32", "prompt_mode": prompt_mode,
                "max_length": 1024, "modules": "all", "module_names": modules, "n_layers": n_layers,
                "data": list(data), "group": None, "spectrum_k": 8, "created": "2025-01-01T00:00:00Z",
                "layergrad_version": "0.1.0", **(manifest_extra or {})}
    if manifest_extra and "n_layers" in manifest_extra and manifest_extra["n_layers"] is None:
        del manifest["n_layers"]
    store = RunStore(path)
    store.open(manifest)
    ex_rows, mod_rows = [], []
    for i in range(n):
        eid = f"e{i}" if ids is None else ids[i]
        ex_rows.append({"id": eid, "group": None if groups is None else groups[i], "source": data[0], "index": i, "order": i, "status": "ok",
                        "reason": None, "instruction": f"instruction {i}" if instructions is None else instructions[i], "output": "a",
                        "loss": 1.0 if loss is None else float(loss[i]), "n_tokens": int(lengths[i]) + 10,
                        "n_prompt_tokens": 10, "n_response_tokens": int(lengths[i]), "response_chars": 4 * int(lengths[i]),
                        "truncated": False})
        for l in range(L):
            for r, role in enumerate(roles):
                row = {"id": eid, "module": f"model.layers.{l}.{ROLE_PATHS.get(role, role)}", "layer": l, "role": role,
                       "out_features": 8, "in_features": 8, "rank": 8, "method": "factored"}
                skip = False
                for m in METRICS:
                    if m in values:
                        v = values[m][i, r, l]
                        if v is None:
                            skip = True
                        row[m] = None if v is None else float(v)
                    else:
                        row[m] = float(rng.uniform(0.5, 1.5)) if fill else None
                if not skip:
                    mod_rows.append(row)
    for j, (status, reason) in enumerate(not_ok):
        ex_rows.append({"id": f"x{j}", "group": None, "source": data[0], "index": n + j, "order": n + j, "status": status,
                        "reason": reason})
    store.write_part(ex_rows, mod_rows, cosine)
    return path


def noise(rng, n, R, L, loc=1.0, scale=0.1):
    return loc + scale * rng.standard_normal((n, R, L))


def study_records(n_valid: int = 7, awkward: bool = True) -> list[dict]:
    """``n_valid`` distinct examples of several lengths (7 is not divisible by 2 ranks), plus,
    with ``awkward``, one invalid record and one whose response ``--max-length 128`` cuts away."""
    recs = []
    for i in range(n_valid):
        r = dict(RECORDS[i % len(RECORDS)])
        r["output"] = r["output"] + " Step 1: 3 + 4 = 7." * (i % 3) + f" ({i})"
        recs.append(r)
    if awkward:
        recs.append({"instruction": "This record has no output.", "input": ""})
        recs.append({"instruction": "What is 12 plus 30? " * 20, "input": "", "output": "42"})
    return recs


def _hashable(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: tuple(v) if hasattr(v, "__len__") and not isinstance(v, (str, bytes, dict)) else v)
    return df


def assert_identical_results(got, want) -> None:
    """Every value of every row of the three tables, exactly (NaN equals NaN)."""
    assert len(want.examples) and len(want.modules)
    for name in ("examples", "modules", "cosine"):
        pd.testing.assert_frame_equal(_hashable(getattr(got, name)), _hashable(getattr(want, name)), check_exact=True, obj=name)


def part_ids(run_dir) -> dict[str, list[str]]:
    """tag -> example ids, for every committed part of a run directory."""
    store = RunStore(run_dir)
    return {t: store.read_part_tables(t, examples_only=True)[0].column("id").to_pylist() for t in store.committed_tags()}


METRICS = ["nuclear", "spectral", "frobenius", "min_sigma", "top1_share", "effective_rank", "stable_rank"]


# distinct records of different lengths (ids are content hashes)
MANY = [
    {"instruction": f"What is {a} plus {b}?", "output": ("Step 1: " * (k % 4)) + f"The answer is {a + b}."}
    for k, (a, b) in enumerate([(12, 30), (3, 4), (7, 8), (20, 22), (5, 5), (9, 1), (14, 2), (6, 30), (1, 1), (2, 40), (11, 11), (8, 4)])
]


def config(tmp_path, records, out="run", **kw):
    data = tmp_path / kw.pop("data_name", "d.json")
    if not data.exists():
        write_json(data, records)
    kw = {"prompt_mode": "base", "stats_dtype": "float64", "spectrum_k": None, **kw}
    return RunConfig(data=[str(data)], out=str(tmp_path / out), progress=False, **kw)


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_runs(a, b, exact=True):
    """Two run directories hold the same examples (once each) and the same numbers."""
    for res in (a, b):
        raw_ex, raw_mod, _ = RunStore(res.path).read_tables()
        ids = raw_ex.column("id").to_pylist()
        assert len(ids) == len(set(ids)), "an example is stored twice"
        keys = list(zip(raw_mod.column("id").to_pylist(), raw_mod.column("module").to_pylist()))
        assert len(keys) == len(set(keys)), "a module row is stored twice"
    cols = ["id", "status", "reason", "loss", "n_tokens", "order"]
    pd.testing.assert_frame_equal(a.examples[cols], b.examples[cols], check_exact=exact, rtol=1e-9)
    ma, mb = (r.modules.sort_values(["id", "module"]).reset_index(drop=True) for r in (a, b))
    pd.testing.assert_frame_equal(ma[["id", "module"] + METRICS], mb[["id", "module"] + METRICS], check_exact=exact, rtol=1e-9)
    if exact:
        assert [list(s) for s in ma["spectrum"]] == [list(s) for s in mb["spectrum"]]


# fp64 model and statistics. These tiny models run transformers' eager attention, whose softmax is
# computed in float32 whatever the model's dtype (eager_attention_forward: softmax(..., dtype=float32)),
# and a padded row is reduced in another order than the same row alone: batched vs one-at-a-time
# differ by up to ~1e-7 relative (more after the backward). One example a batch, the fast paths equal
# the oracle to ~1e-14 (tests/test_oracle_independent.py holds them to 1e-8 with the softmax in float64).
RTOL = 1e-6


def loaded(model, tok, fingerprint="fp", **fields):
    """A :class:`LoadedModel` of an in-memory model (``fields``: repo/revision/adapter attributes)."""
    return LoadedModel(model=model, tokenizer=tok, source="test", path="test", fingerprint=fingerprint,
                       dtype=str(model.dtype).removeprefix("torch."), **fields)


def run_and_load(tmp_path, model, tok, records, **kw):
    data = write_json(tmp_path / "d.json", records)
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / kw.pop("out", "run")), progress=False, stats_dtype="float64",
                    spectrum_k=None, **kw)
    engine.run(cfg, loaded=loaded(model, tok))
    return load_results(cfg.out), data


def oracle_for(model, tok, data, mode, targets, max_length=1024):
    exs, _ = load_examples([str(data)])
    out = {}
    for ex in exs:
        enc = encode(ex, tok, mode, max_length)
        if enc.skip_reason:
            continue
        loss, grads = oracle.example_gradients(model, enc.input_ids, max(enc.n_prompt, 1), targets)
        out[ex.id] = (loss, oracle.dense_stats(grads))
    return out


def assert_matches_oracle(res, want, tol=RTOL):
    assert len(res.ok) == len(want)
    for _, ex in res.ok.iterrows():
        loss, stats = want[ex["id"]]
        assert ex["loss"] == pytest.approx(loss, rel=1e-10)
        rows = res.modules[res.modules["id"] == ex["id"]]
        assert len(rows) == len(stats)
        for _, r in rows.iterrows():
            o = stats[r["module"]]
            scale = o["spectral"]
            for k in ("nuclear", "spectral", "frobenius", "top1_share", "effective_rank", "stable_rank"):
                assert r[k] == pytest.approx(o[k], rel=tol), (r["module"], k)
            assert abs(r["min_sigma"] - o["min_sigma"]) <= tol * scale
            s = torch.tensor(r["spectrum"], dtype=torch.float64)
            torch.testing.assert_close(s, o["svdvals"][: len(s)].float().double(), rtol=1e-6, atol=1e-6 * scale)


JSONL_LINES = [
    '{"id": "a", "instruction": "What is 12 plus 30?", "output": "The answer is 42."}',
    '{"output":"7","instruction":"Would a lion salute a lieutenant?","id":"b"}',
    '{ "id" : "c" , "instruction": "Ava has 3 apples and buys 4 more.", "input": "How many now?", "output": "Step 1: 3 + 4 = 7. The answer is 7.", "extra": [1, 2.50, "é"] }',
    '{"id": "d", "instruction": "Hi", "output": "Step 1: Ava has 3 apples. Step 2: she buys 4 more, so 3 + 4 = 7. The final answer is 7."}',
    '{"id": "e", "instruction": "What is 12 plus 30?", "output": "42", "meta": {"src": "gsm\\u00e9"}}',
    '{"id": "f", "instruction": "You are a helpful assistant.", "output": "The final answer is no."}',
]


def selection_run(tmp: Path) -> Path:
    """One tiny-model run with IFD over a JSONL file (odd spacing, key order, escapes) and a JSON file, in ``tmp``."""
    jl = tmp / "d.jsonl"
    jl.write_text("\n".join(JSONL_LINES) + "\n", encoding="utf-8")
    js = write_json(tmp / "e.json", [{"instruction": "What is 12 plus 30?", "input": "", "output": "It is 42, since 12 + 30 = 42."},
                                     {"instruction": "Hi", "input": "", "output": "Step 1: hello."}])
    tok = make_tokenizer(bos=False)
    cfg = RunConfig(data=[str(jl), str(js)], out=str(tmp / "run"), progress=False, ifd=True, prompt_mode="base",
                    modules="all", batch_size=4, stats_dtype="float64")
    engine.run(cfg, loaded=loaded(make_model("llama", len(tok)), tok))
    return tmp


# The training-time callback's tiny Trainer runs

RECS = RECORDS + [dict(r, output=r["output"] + " Done.") for r in RECORDS] + [
    {"instruction": "Name a fruit.", "input": "", "output": "An apple."},
]  # 11 examples: the last batch of an epoch is short


def items(tokenizer, data):
    """The trainer's dataset: layergrad's own tokens, labels -100 on the prompt (so both mean the same loss)."""
    exs, _ = load_examples([str(data)])
    out = []
    for ex in exs:
        enc = encode(ex, tokenizer, "base", 1024)
        P = max(enc.n_prompt, 1)
        out.append({"input_ids": enc.input_ids, "labels": [-100] * P + enc.input_ids[P:], "record": ex.id})
    return out


def collate(pad_id):
    def fn(batch):
        t = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), t), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), t), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), t), dtype=torch.long)
        for r, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[r, :n] = torch.tensor(b["input_ids"])
            labels[r, :n] = torch.tensor(b["labels"])
            mask[r, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return fn


def loss64(logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, shift_labels=None, **kw):
    """Hugging Face's causal-LM loss (same reduction) without its cast of the logits to float32."""
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab_size), shift_labels.reshape(-1).to(logits.device),
                                             ignore_index=ignore_index, reduction=reduction)
    return loss / num_items_in_batch if reduction == "sum" else loss


def train(tmp_path, tokenizer, *, dtype="float32", ga=1, steps=4, callbacks=(), checkpointing=None, seed=0, loss=None, attn="eager", batch=2, arch="llama"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_json(tmp_path / "d.json", RECS)
    model = make_model(arch, len(tokenizer), dtype=dtype)
    for m in model.modules():  # no dropout: the training step's gradient is then that of `layergrad run` (eval mode)
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    if loss is not None:
        model.loss_function = loss
    if attn != "eager":
        model.set_attn_implementation(attn)
    model.train()
    losses = []
    hook = model.register_forward_hook(lambda m, a, o: losses.append(o["loss"].detach().clone()) if m.training else None)
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=batch, gradient_accumulation_steps=ga,
        max_steps=steps, learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to=[], seed=seed,
        use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False,
        gradient_checkpointing=checkpointing is not None,
        gradient_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"} if checkpointing else None,
    )
    ds = [{k: v for k, v in it.items() if k != "record"} for it in items(tokenizer, data)]
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate(tokenizer.pad_token_id),
                      callbacks=list(callbacks), processing_class=tokenizer)
    trainer.train()
    hook.remove()
    return model, torch.stack(losses), data


def padding_mask(lengths, t: int, pad: str = "right", g: torch.Generator | None = None, dtype=torch.bool) -> torch.Tensor:
    """``(n, t)``: example ``b``'s ``lengths[b]`` real tokens at the right, at the left, or ``scattered``
    (positions drawn from ``g``) of ``t``."""
    mask = torch.zeros(len(lengths), t, dtype=dtype)
    for b, L in enumerate(lengths):
        if pad == "right":
            mask[b, :L] = True
        elif pad == "left":
            mask[b, t - L :] = True
        else:  # scattered
            mask[b, torch.randperm(t, generator=g)[:L]] = True
    return mask


def measure_shared(meas, targets, X, Ds, mask) -> dict:
    """Drive a sink by hand: every target reads the one input ``X`` (key ``("x",)``), target ``j`` the output
    gradients ``Ds[j]``; the finished modules by name."""
    meas.begin(mask, {("x",): len(targets)}, {})
    for tg, Dt in zip(targets, Ds):
        meas.accept(tg, X, Dt, ("x",))
    return meas.finish().modules
