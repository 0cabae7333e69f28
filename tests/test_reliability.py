"""Reliability promises (issue 6), each with a test that fails when the promise is broken.

1. crash safety: half-written and unreadable parts are discarded on resume (the SIGKILL test is
   tests/test_crash.py); 2. a run directory belongs to one configuration; 3. bad input is refused
   before anything is computed; 4. numerical faults are recorded, never averaged, and do not
   touch the other examples of their batch; 5. out of memory: split and retry, down to one
   example; 6. disk full or unwritable output: a clear error, earlier parts intact, resumable.
"""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from conftest import make_model, save_model, write_json
from layergrad.run import engine
from layergrad.run import faults
from layergrad.cli import main
from layergrad.config import RunConfig
from layergrad.inputs.models import LoadedModel
from layergrad.store import ConfigMismatch, RunStore, load_results
from layergrad.store.run import IDENTITY_KEYS, UNREADABLE

METRICS = ["nuclear", "spectral", "frobenius", "min_sigma", "top1_share", "effective_rank", "stable_rank"]

# distinct records of different lengths (ids are content hashes)
MANY = [
    {"instruction": f"What is {a} plus {b}?", "output": ("Step 1: " * (k % 4)) + f"The answer is {a + b}."}
    for k, (a, b) in enumerate([(12, 30), (3, 4), (7, 8), (20, 22), (5, 5), (9, 1), (14, 2), (6, 30), (1, 1), (2, 40), (11, 11), (8, 4)])
]


def loaded(model, tok, fingerprint="fp", **fields):
    return LoadedModel(model=model, tokenizer=tok, source="test", path="test", fingerprint=fingerprint,
                       dtype=str(model.dtype).removeprefix("torch."), **fields)


def config(tmp_path, records, out="run", **kw):
    data = tmp_path / kw.pop("data_name", "d.json")
    if not data.exists():
        write_json(data, records)
    kw = {"prompt_mode": "base", "stats_dtype": "float64", "spectrum_k": None, **kw}
    return RunConfig(data=[str(data)], out=str(tmp_path / out), progress=False, **kw)


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_results(a, b, exact=True):
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


# ---------------------------------------------------------------------------------------
# 1. crash safety: what a crash can leave behind is discarded on resume
# ---------------------------------------------------------------------------------------


def test_half_written_unreadable_and_orphan_parts_are_discarded_on_resume(tmp_path, tokenizer):
    model = make_model("llama", len(tokenizer))
    whole = config(tmp_path, MANY, out="whole", batch_size=2, modules="attn")
    engine.run(whole, loaded=loaded(model, tokenizer))
    hurt = config(tmp_path, MANY, out="hurt", batch_size=2, modules="attn")
    engine.run(hurt, loaded=loaded(model, tokenizer))
    parts = Path(hurt.out) / "parts"
    # a committed examples part cut short, a modules part cut short, a modules part gone
    for name in ("examples-r0-000001.parquet", "modules-r0-000003.parquet"):
        data = (parts / name).read_bytes()
        (parts / name).write_bytes(data[: len(data) // 2])
    (parts / "modules-r0-000005.parquet").unlink()
    # a temporary file and an orphan (modules written, examples never committed) of a crashed writer
    (parts / f"examples-r0-000007.parquet.{os.getpid() + 1}.tmp").write_bytes(b"PAR1 half a part")
    (parts / "modules-r0-000099.parquet").write_bytes((parts / "modules-r0-000000.parquet").read_bytes())

    lost = {"examples-r0-000001", "modules-r0-000003", "modules-r0-000005"}
    n_lost_examples = sum(len(pq.read_table(parts / f"examples-r0-00000{k}.parquet")) for k in (3, 5))
    with pytest.warns(UserWarning, match="cannot be read and is left out"):
        before = load_results(hurt.out)  # readers already ignore the damaged parts, whole
    assert len(before.examples) == len(MANY) - n_lost_examples - 2 and set(before.modules["id"]) <= set(before.examples["id"])

    s = engine.run(hurt, loaded=loaded(model, tokenizer))
    assert s.computed == n_lost_examples + 2  # exactly the examples of the three damaged parts
    assert not list(parts.glob("*.tmp")) and not (parts / "modules-r0-000099.parquet").exists()
    moved = {p.name.split(".parquet")[0] for p in (parts / UNREADABLE).iterdir()}
    assert {m.replace("modules", "examples") for m in lost} <= moved  # set aside whole, never deleted
    assert_same_results(load_results(whole.out), load_results(hurt.out))


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    import pyarrow as pa

    from layergrad.store import parts

    def full(table, fh, **kw):
        fh.write(b"PAR1 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(parts.pq, "write_table", full)
    with pytest.raises(parts.StoreWriteError) as info:
        parts.write_atomic(pa.table({"a": [1]}), tmp_path / "x.parquet")
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_keeps_what_was_stored_and_the_rerun_finishes(tmp_path, tiny_folder, monkeypatch, capsys):
    data = write_json(tmp_path / "d.json", MANY[:5])
    args = ["run", "--model", str(tiny_folder), "--data", str(data), "--out", str(tmp_path / "o"), "--batch-size", "1",
            "--no-progress", "--modules", "attn"]
    real, calls = engine.compute_batch, {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "compute_batch", interrupted)
    assert main(args) == 130
    assert "results stored so far are kept, rerun the same command to resume" in capsys.readouterr().err
    monkeypatch.setattr(engine, "compute_batch", real)
    assert main(args) == 0
    assert "computed 3 now, 2 were already stored" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# 2. a run directory belongs to one configuration
# ---------------------------------------------------------------------------------------

# identity key -> (RunConfig changes, loaded-model changes)
CHANGES = {
    "model_fingerprint": ({}, {"fingerprint": "another model"}),
    "prompt_mode": ({"prompt_mode": "chat"}, {}),
    "system_prompt": ({"system_prompt": "none"}, {}),
    "turns": ({"turns": "all"}, {}),  # on chat records (CHATS below): --turns all refuses Alpaca records
    "max_length": ({"max_length": 512}, {}),
    "modules": ({"modules": "mlp"}, {}),
    "dtype": ({}, {"dtype": "float32"}),
    "stats_dtype": ({"stats_dtype": "float32"}, {}),
    "spectrum_k": ({"spectrum_k": 8}, {}),
    "elementwise": ({"elementwise": True}, {}),
    "cosine": ({"cosine": True}, {}),
    "ifd": ({"ifd": True}, {}),
    "token_shares": ({"token_shares": True}, {}),
    "loss_rule": ({}, {}),  # a new loss definition (engine.LOSS_RULE)
    "schema_version": ({}, {}),  # rows that mean something else (store/schema.py)
    "model_revision": ({}, {"revision": "0123abcd"}),  # a hub model at another commit
    "adapter_fingerprint": ({}, {"adapter": "lora", "adapter_fingerprint": "a2"}),  # another adapter (first: a1)
    "adapter_params": ({}, {"adapter": "lora", "adapter_fingerprint": "a1", "adapter_params": True}),
}
# what the FIRST run's model carries for a key (the second's is in CHANGES)
FIRST_MODEL = {"adapter_fingerprint": {"adapter": "lora", "adapter_fingerprint": "a1"},
               "adapter_params": {"adapter": "lora", "adapter_fingerprint": "a1"}}

CHATS = [{"messages": [{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "7."},
                       {"role": "user", "content": "And 12 plus 30?"}, {"role": "assistant", "content": "The answer is 42."}]}] * 2


def test_every_identity_key_has_a_test():
    assert set(CHANGES) == set(IDENTITY_KEYS)


@pytest.mark.parametrize("key", list(CHANGES))
def test_resume_with_another_configuration_is_refused_naming_it(tmp_path, tokenizer, key, monkeypatch):
    model = make_model("llama", len(tokenizer))
    records = CHATS if key == "turns" else MANY[:2]
    first = config(tmp_path, records, modules="attn")
    engine.run(first, loaded=loaded(model, tokenizer, **FIRST_MODEL.get(key, {})))
    before = tree_digest(Path(first.out))

    cfg_changes, model_changes = CHANGES[key]
    if "data_name" in cfg_changes:
        write_json(tmp_path / cfg_changes["data_name"], MANY[:3])
    second = config(tmp_path, records, **{"modules": "attn", **cfg_changes})
    other = loaded(model, tokenizer, **{"fingerprint": "fp", **{k: v for k, v in model_changes.items() if k != "dtype"}})
    if "dtype" in model_changes:
        other = loaded(model.float(), tokenizer)
    if key == "loss_rule":
        monkeypatch.setattr(engine, "LOSS_RULE", "mean-ce-response-tokens/v2")
    if key == "schema_version":
        from layergrad.store import manifest

        monkeypatch.setattr(manifest, "SCHEMA_VERSION", manifest.SCHEMA_VERSION + 1)
    with pytest.raises(ConfigMismatch) as info:
        engine.run(second, loaded=other)
    message = str(info.value)
    assert f"[{key}: stored " in message and " (stored) vs " in message  # the option in the user's terms, and the key
    assert sum(line.startswith("  ") and ": stored " in line for line in message.splitlines()) == 1  # only the difference
    assert f"--out {first.out}-2" in message  # the explicit way to start the new run elsewhere
    assert tree_digest(Path(first.out)) == before  # nothing written, nothing overwritten


def test_another_model_through_the_cli_is_refused_and_results_kept(tmp_path, tokenizer, capsys):
    a = save_model(tmp_path, "llama", tokenizer)
    b = tmp_path / "other-llama"
    make_model("llama", len(tokenizer), seed=1).save_pretrained(b)
    tokenizer.save_pretrained(b)
    data = write_json(tmp_path / "d.json", MANY[:2])
    out = tmp_path / "o"
    common = ["run", "--data", str(data), "--out", str(out), "--modules", "q", "--no-progress"]
    assert main(common + ["--model", str(a)]) == 0
    before = tree_digest(out)
    assert main(common + ["--model", str(b)]) == 2
    err = capsys.readouterr().err
    assert "model_fingerprint: stored" in err and f"--out {out}-2" in err
    assert tree_digest(out) == before
    assert main(common + ["--model", str(a)]) == 0  # the same configuration resumes (nothing left to do)
    assert "computed 0 now, 2 were already stored" in capsys.readouterr().out


def test_a_folder_with_a_foreign_manifest_is_refused(tmp_path, tokenizer):
    out = tmp_path / "o"
    out.mkdir()
    (out / "manifest.json").write_text("not json {", encoding="utf-8")
    with pytest.raises(ConfigMismatch, match="not a layergrad manifest"):
        engine.run(config(tmp_path, MANY[:1], out="o"), loaded=loaded(make_model("llama", len(tokenizer)), tokenizer))
    assert (out / "manifest.json").read_text(encoding="utf-8") == "not json {"


# ---------------------------------------------------------------------------------------
# 3. bad input is refused before anything is computed, naming file, record and field
# ---------------------------------------------------------------------------------------


def _catalogue():
    """(case id, file name, content, fragments the message must hold): the data catalogue of
    tests/test_data.py (validated there) run through `layergrad run`, plus what needs a model."""
    from test_data import ALPACA, CHAT_PROBLEMS, FILE_PROBLEMS, RECORD_PROBLEMS

    cases = []
    for name, content, index, field, fragment in RECORD_PROBLEMS:
        cases.append((name, "data.json", content, [f"record {index}", fragment] + ([f"field {field!r}"] if field else [])))
    for name, fname, content, fragment in FILE_PROBLEMS:
        cases.append((name, fname, content, [fragment]))
    for name, record, field, fragment in CHAT_PROBLEMS:
        cases.append(("chat " + name, "chat.json", [ALPACA[0], record], ["record 1", f"field {field!r}", fragment]))
    cases.append(("duplicate ids", "data.json", [{"id": "a", **ALPACA[0]}, {"id": "a", **ALPACA[1]}],
                  ["record 1", "field 'id'", "duplicate id 'a'"]))
    cases.append(("response wholly truncated", "data.json",
                  [ALPACA[0], {"instruction": "What is 12 plus 30? " * 12, "output": "42"}],
                  ["record 1", "field 'output'", "response truncated away by --max-length 32", "--skip-invalid"]))
    return cases


CATALOGUE = _catalogue()
# what needs a model: (case id, extra arguments, fragments)
MODEL_PROBLEMS = [
    ("unknown model path", ["--model", "{tmp}/no-such-model"], ["no-such-model"]),
    ("no module matches --modules", ["--modules", "qkv"], ["no module of LlamaForCausalLM matches --modules 'qkv'", "roles present"]),
    ("unknown role, did you mean", ["--modules", "qproj"], ["unknown role 'qproj'", "did you mean 'q'?"]),
]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    return save_model(tmp_path_factory.mktemp("model"), "llama", tokenizer)


def _write(path: Path, content) -> Path:
    from test_data import write

    return write(path, content)


@pytest.mark.parametrize("name, fname, content, fragments", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_run_refuses_bad_data_before_anything_is_written(tmp_path, tiny_folder, capsys, name, fname, content, fragments):
    data = _write(tmp_path / fname, content)
    out = tmp_path / "out"
    code = main(["run", "--model", str(tiny_folder), "--data", str(data), "--out", str(out), "--no-progress",
                 "--prompt-mode", "base", "--max-length", "32"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "layergrad: error: " in err and "Traceback" not in err
    assert str(data) in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not out.exists()


@pytest.mark.parametrize("name, args, fragments", MODEL_PROBLEMS, ids=[c[0] for c in MODEL_PROBLEMS])
def test_run_refuses_bad_model_or_selection(tmp_path, tiny_folder, capsys, name, args, fragments):
    data = write_json(tmp_path / "d.json", MANY[:2])
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    model = [] if "--model" in args else ["--model", str(tiny_folder)]
    out = tmp_path / "out"
    code = main(["run", *model, "--data", str(data), "--out", str(out), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err.replace('"', "'"), (fragment, err)
    assert not out.exists()


def test_validate_lists_every_problem_of_every_file_at_once(tmp_path, capsys):
    files, expected = [], 0
    for k, (name, fname, content, _) in enumerate(CATALOGUE):
        if name == "response wholly truncated":  # needs a tokenizer: `run` finds it, not `validate`
            continue
        folder = tmp_path / str(k)
        folder.mkdir()
        files.append(str(_write(folder / fname, content)))
        expected += 1
    assert main(["validate", *files]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == expected  # one problem per case, none lost, none repeated
    assert {line.split(":")[0] for line in lines} == set(files)


def test_skip_invalid_runs_the_rest_and_stores_each_bad_record_with_its_reason(tmp_path, tokenizer):
    records = [MANY[0], {"instruction": "x", "output": ""}, {"instruction": "What is 12 plus 30? " * 12, "output": "42"},
               ["not", "an", "object"], MANY[1]]
    cfg = config(tmp_path, records, skip_invalid=True, max_length=32)
    s = engine.run(cfg, loaded=loaded(make_model("llama", len(tokenizer)), tokenizer))
    res = load_results(cfg.out)
    assert s.status_counts == {"ok": 2, "invalid": 2, "skipped": 1}
    by_index = {r["index"]: r for r in res.examples.to_dict("records")}
    assert by_index[1]["status"] == "invalid" and "record 1, field 'output'" in by_index[1]["reason"]
    assert by_index[3]["status"] == "invalid" and "record 3" in by_index[3]["reason"]
    assert by_index[2]["status"] == "skipped" and "--max-length 32" in by_index[2]["reason"]
    kinds = {i: faults.reason_kind(r["status"], r["reason"]) for i, r in by_index.items()}
    assert kinds == {0: None, 1: "invalid record", 2: "response truncated by --max-length", 3: "invalid record", 4: None}
    assert set(res.modules["id"]) == set(res.ok["id"])


# ---------------------------------------------------------------------------------------
# 4. numerical faults are recorded, never averaged, and do not touch the rest of the batch
# ---------------------------------------------------------------------------------------


class Poison:
    """Hooks that put a non-finite value into one example's activations (forward) or
    activation gradients (backward) at decoder layer ``layer``, found by a marker token."""

    def __init__(self, model, marker: int, layer: int, where: str, value=float("nan")):
        self.marker, self.value, self.where = marker, value, where
        self.ids = None
        self.handles = [
            model.register_forward_pre_hook(self._see_ids, with_kwargs=True),
            model.model.layers[layer].register_forward_hook(self._poison),
        ]

    def _see_ids(self, module, args, kwargs):
        self.ids = kwargs["input_ids"]

    def _rows(self):
        return (self.ids == self.marker).any(dim=1).nonzero().flatten().tolist()

    def _poison(self, module, args, out):
        h = out[0] if isinstance(out, tuple) else out
        rows = self._rows()
        if not rows:
            return None
        if self.where == "forward":
            h = h.clone()
            h[rows, 1] = self.value
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
        if not h.requires_grad:
            return None

        def backward(g):
            g = g.clone()
            g[rows, 1] = self.value
            return g

        h.register_hook(backward)
        return None

    def remove(self):
        for h in self.handles:
            h.remove()


FAULTY = {"instruction": "Spell zebra.", "output": "z e b r a"}


@pytest.mark.parametrize("where, value", [("forward", float("nan")), ("forward", float("inf")), ("backward", float("inf")),
                                          ("backward", float("nan"))])
def test_non_finite_example_is_failed_with_reason_and_its_batch_mates_are_untouched(tmp_path, tokenizer, where, value):
    model = make_model("llama", len(tokenizer))
    records = MANY[:4] + [FAULTY]
    clean_cfg = config(tmp_path, records, out="clean", batch_size=8)
    engine.run(clean_cfg, loaded=loaded(model, tokenizer))
    clean = load_results(clean_cfg.out)

    marker = tokenizer.convert_tokens_to_ids("z")
    assert all("z" not in r["instruction"] + r["output"] for r in MANY[:4])
    poison = Poison(model, marker, layer=1, where=where, value=value)
    try:
        cfg = config(tmp_path, records, out="faulty", batch_size=8)  # one batch: the fault shares it
        engine.run(cfg, loaded=loaded(model, tokenizer))
    finally:
        poison.remove()
    res = load_results(cfg.out)
    bad = res.examples[res.examples["index"] == 4].iloc[0]
    assert bad["status"] == "failed"
    if where == "forward":  # the loss itself is not finite
        assert bad["reason"].startswith("non-finite loss: ") and pd.isna(bad["loss"])
    else:  # finite loss, non-finite gradient in the layers below the fault
        assert bad["reason"].startswith("non-finite gradient: in ") and "model.layers.1." in bad["reason"]
        assert bad["loss"] == clean.examples[clean.examples["index"] == 4]["loss"].iloc[0]
        assert "model.layers.2." not in bad["reason"]
    assert faults.reason_kind(bad["status"], bad["reason"]) in faults.FAILURE_KINDS
    assert bad["id"] not in set(res.modules["id"]) and bad["id"] not in set(res.ok["id"])  # never averaged
    # the other four: bit for bit the clean run's numbers
    others = clean.examples["index"] != 4
    pd.testing.assert_frame_equal(res.examples[others][["id", "loss"]], clean.examples[others][["id", "loss"]], check_exact=True)
    keep = clean.modules[clean.modules["id"] != bad["id"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(res.modules.reset_index(drop=True)[["id", "module"] + METRICS], keep[["id", "module"] + METRICS],
                                  check_exact=True)


def test_finite_guard_ignores_non_finite_padding_and_counts_shared_inputs_once():
    from layergrad.inputs.targets import Target
    from layergrad.measure.guard import FiniteGuard
    from layergrad.measure.sink import Measured

    seen = []

    class Sink:
        def begin(self, mask, *a):
            self.mask = mask

        def accept(self, target, X, D, key):
            seen.append((target.name, X.clone(), D.clone()))

        def finish(self):
            return Measured(modules={"q": "from the sink"})

    inner = Sink()
    guard = FiniteGuard(inner)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    guard.begin(mask, {}, {})
    X = torch.ones(2, 3, 4)
    X[0, 2, 0] = float("nan")  # padding of example 0: cleaned, not blamed
    X[1, 0, 1] = float("inf")  # a real token of example 1
    D = torch.ones(2, 3, 5)
    q, k = (Target(n, None, 0, n, 5, 4, "linear") for n in ("q", "k"))
    guard.accept(q, X, D, ("x",))
    guard.accept(k, X, D, ("x",))
    measured = guard.finish()
    assert measured.faults == {1: ["q", "k"]} and measured.modules == {"q": "from the sink"}
    assert all(torch.isfinite(x).all() and torch.isfinite(d).all() for _, x, d in seen)
    assert torch.equal(seen[0][1][1, 1:], X[1, 1:]) and torch.equal(seen[0][1][0, :2], X[0, :2])  # the rest untouched
    assert torch.isnan(X[0, 2, 0])  # the caller's tensor is not modified
    assert inner.mask is mask  # begin reached the wrapped sink
    assert not hasattr(guard, "mask")  # a plain wrapper: no attribute pass-through


# ---------------------------------------------------------------------------------------
# 5. out of memory: split and retry down to one example; one that does not fit alone fails
# ---------------------------------------------------------------------------------------


class FakeMemory:
    """Raises ``torch.OutOfMemoryError`` when a batch holds more than ``limit`` padded tokens,
    in the forward pass or in the backward pass (from a tensor hook, mid-backward)."""

    def __init__(self, model, limit: int, where: str):
        self.limit, self.where, self.raised = limit, where, 0
        self.handles = [model.model.layers[1].register_forward_hook(self._hook)]

    def _oom(self, tokens):
        self.raised += 1
        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {tokens} tokens (simulated)")

    def _hook(self, module, args, out):
        h = out[0] if isinstance(out, tuple) else out
        tokens = h.shape[0] * h.shape[1]
        if tokens <= self.limit:
            return None
        if self.where == "forward":
            self._oom(tokens)
        if not h.requires_grad:  # a no-grad forward (IFD): nothing to interrupt in a backward
            return None

        def backward(g):
            self._oom(tokens)

        h.register_hook(backward)
        return None

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_out_of_memory_splits_batches_and_fails_only_what_does_not_fit_alone(tmp_path, tokenizer, where, capsys):
    model = make_model("llama", len(tokenizer))
    records = MANY[:6] + [{"instruction": "What is 12 plus 30? " * 8, "output": "The answer is 42."}]
    one_cfg = config(tmp_path, records, out="one", batch_size=1, modules="attn")
    engine.run(one_cfg, loaded=loaded(model, tokenizer))
    one = load_results(one_cfg.out)
    lengths = sorted(one.examples["n_tokens"])
    limit = lengths[-2] * 2  # two examples fit, no more; the longest never fits
    assert lengths[-1] > limit

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    oom = FakeMemory(model, limit, where)
    try:
        cfg = config(tmp_path, records, out="split", batch_size=8, max_batch_tokens=10_000, modules="attn", ifd=where == "backward")
        s = engine.run(cfg, loaded=loaded(model, tokenizer))
    finally:
        oom.remove()
    assert oom.raised >= 3
    res = load_results(cfg.out)
    failed = res.examples[res.examples["status"] == "failed"]
    assert len(failed) == 1 and s.status_counts == {"ok": 6, "failed": 1}
    assert failed["reason"].iloc[0] == f"out of memory: does not fit alone ({lengths[-1]} tokens)"
    assert failed["n_tokens"].iloc[0] == lengths[-1] and failed["index"].iloc[0] == 6
    if cfg.ifd:  # a failed example has no IFD, and says why; the others keep theirs
        assert "out of memory" in failed["ifd_reason"].iloc[0] and res.ok["ifd"].notna().all()
    assert "splitting it" in capsys.readouterr().err
    # every other example: the numbers of a run one example at a time (padding changes nothing)
    ok_one = one.examples[one.examples["index"] != 6]
    pd.testing.assert_frame_equal(res.ok[["id", "loss"]].reset_index(drop=True), ok_one[["id", "loss"]].reset_index(drop=True),
                                  check_exact=False, rtol=1e-12)
    mods_one = one.modules[one.modules["id"].isin(res.ok["id"])].reset_index(drop=True)
    # float32 statistics: the Gram path, whose singular values are exact to ~1e-8 * s_1 and not thresholded,
    # so the values that are zero in exact arithmetic are ~1e-8 * s_1 noise that the batch shape reshuffles
    # (up to 8e-9 of the nuclear norm here); the loss above stays equal to 1e-12
    ratios = [m for m in METRICS if m != "min_sigma"]
    pd.testing.assert_frame_equal(res.modules[["id", "module"] + ratios].reset_index(drop=True), mods_one[["id", "module"] + ratios],
                                  check_exact=False, rtol=1e-7, atol=1e-12)
    # min_sigma may itself be ~1e-8 * s_1 (a value zero in exact arithmetic): held to the spectrum's scale
    got, want = res.modules["min_sigma"].to_numpy(), mods_one["min_sigma"].to_numpy()
    assert (abs(got - want) <= 1e-7 * mods_one["spectral"].to_numpy()).all()
    # the model is left as found, whatever was interrupted
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()) == hooks
    assert all(p.grad is None for p in model.parameters())


def test_backoff_learns_the_limit_keeps_order_and_passes_bugs_through():
    calls = []

    def compute(part):
        calls.append(tuple(part))
        if len(part) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        if 7 in part:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge (simulated)")
        return list(part)

    b = faults.Backoff()
    cost = lambda part: 10 * len(part)  # noqa: E731
    fail = lambda item, reason: (item, reason)  # noqa: E731
    assert b.run([0, 1, 2, 3, 4, 5, 6, 7], compute, fail, cost) == [[0, 1], [2, 3], [4, 5], [6], (7, "linear algebra failure: linalg.svd: The algorithm failed to converge (simulated)")]
    assert b.limit == 40
    calls.clear()
    assert b.run([8, 9, 10, 11], compute, fail, cost) == [[8, 9], [10, 11]]
    assert calls == [(8, 9), (10, 11)]  # split before trying: no second out-of-memory error

    def buggy(part):
        raise ValueError("a bug, not a fault")

    with pytest.raises(ValueError, match="a bug"):
        b.run([1, 2], buggy, fail, cost)
    assert faults.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert not faults.is_out_of_memory(RuntimeError("shape mismatch"))


# ---------------------------------------------------------------------------------------
# 6. disk full or unwritable output: a clear error, earlier parts intact, resumable
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "free some space"), (errno.EDQUOT, "free some space"),
                                          (errno.EACCES, "make it writable"), (errno.EROFS, "make it writable"),
                                          (errno.EIO, "fix the cause")])
def test_write_errors_name_the_path_the_cause_and_what_to_do(code, advice):
    from layergrad.store.parts import StoreWriteError

    e = StoreWriteError(Path("/runs/x/parts/examples-r0-000002.parquet"), OSError(code, os.strerror(code)))
    assert str(e) == (f"cannot write /runs/x/parts/examples-r0-000002.parquet: {os.strerror(code)} ({errno.errorcode[code]}). "
                      f"Results committed before are intact; {advice}, then rerun the same command to resume.")
    assert e.errno == code


def test_disk_full_mid_run_is_a_clear_error_and_the_run_resumes(tmp_path, tiny_folder, monkeypatch, capsys):
    from layergrad.store import parts

    data = write_json(tmp_path / "d.json", MANY[:6])
    args = ["run", "--model", str(tiny_folder), "--data", str(data), "--batch-size", "1", "--no-progress", "--modules", "attn"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0

    real, calls = parts.pq.write_table, {"n": 0}

    def failing(table, where, **kw):
        calls["n"] += 1
        if calls["n"] > 5:  # two parts (modules + examples each) commit, the third fails mid-write
            where.write(b"PAR1 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(table, where, **kw)

    monkeypatch.setattr(parts.pq, "write_table", failing)
    out = tmp_path / "o"
    assert main(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out / 'parts'}" in err and "No space left on device (ENOSPC)" in err
    assert "free some space" in err and "rerun the same command to resume" in err and "Traceback" not in err
    kept = load_results(out)
    assert len(kept.examples) == 2 and not list((out / "parts").glob("*.tmp"))
    whole = load_results(tmp_path / "whole")
    want = dict(zip(whole.examples["id"], whole.examples["loss"]))
    assert {i: want[i] for i in kept.examples["id"]} == dict(zip(kept.examples["id"], kept.examples["loss"]))  # intact

    monkeypatch.setattr(parts.pq, "write_table", real)  # space is back
    assert main(args + ["--out", str(out)]) == 0
    assert "computed 4 now, 2 were already stored" in capsys.readouterr().out
    assert_same_results(whole, load_results(out))


def test_output_that_cannot_be_created_is_a_clear_error(tmp_path, tiny_folder, capsys):
    data = write_json(tmp_path / "d.json", MANY[:1])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    assert main(["run", "--model", str(tiny_folder), "--data", str(data), "--out", str(blocker / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {blocker / 'run' / 'parts'}" in err and "ENOTDIR" in err and "Traceback" not in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_directory_is_a_clear_error(tmp_path, tiny_folder, capsys):
    data = write_json(tmp_path / "d.json", MANY[:2])
    out = tmp_path / "o"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main(["run", "--model", str(tiny_folder), "--data", str(data), "--out", str(out), "--no-progress"]) == 2
    finally:
        out.chmod(0o700)
    err = capsys.readouterr().err
    assert f"cannot write {out / 'parts'}" in err and "EACCES" in err and "make it writable" in err
