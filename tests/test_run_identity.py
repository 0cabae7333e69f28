"""Reliability: a run directory belongs to one configuration."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_model, save_model, write_json
from layergrad.run import engine
from layergrad.cli import main
from layergrad.store import ConfigMismatch
from layergrad.store.run import IDENTITY_KEYS
from helpers import MANY, config, loaded, tree_digest


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
    "cosine_layers": ({"cosine": True, "cosine_layers": True}, {}),  # the first run has --cosine (FIRST_CONFIG)
    "ifd": ({"ifd": True}, {}),
    "token_shares": ({"token_shares": True}, {}),
    "gram_precision": ({"gram_precision": "float32-qr"}, {}),  # the float32 route (tests/test_gram_precision.py)
    "truncate_response": ({"truncate_response": 2}, {}),  # length control (tests/test_truncation.py)
    "truncate_to": ({"truncate_to": "partner"}, {}),  # a run computed first, under tmp_path/partner
    "loss_rule": ({}, {}),  # a new loss definition (engine.LOSS_RULE)
    "schema_version": ({}, {}),  # rows that mean something else (store/schema.py)
    "model_revision": ({}, {"revision": "0123abcd"}),  # a hub model at another commit
    "adapter_fingerprint": ({}, {"adapter": "lora", "adapter_fingerprint": "a2"}),  # another adapter (first: a1)
    "adapter_params": ({}, {"adapter": "lora", "adapter_fingerprint": "a1", "adapter_params": True}),
}
# what the FIRST run's config and model carry for a key (the second's is in CHANGES)
FIRST_CONFIG = {"cosine_layers": {"cosine": True}}
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
    first = config(tmp_path, records, **{"modules": "attn", **FIRST_CONFIG.get(key, {})})
    engine.run(first, loaded=loaded(model, tokenizer, **FIRST_MODEL.get(key, {})))
    before = tree_digest(Path(first.out))

    cfg_changes, model_changes = CHANGES[key]
    if key == "truncate_to":  # the partner: the same data, another run directory
        engine.run(config(tmp_path, records, out="partner", modules="attn"), loaded=loaded(model, tokenizer))
        cfg_changes = {"truncate_to": str(tmp_path / "partner")}
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
