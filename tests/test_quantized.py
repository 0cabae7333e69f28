"""A quantised model is refused with the method named and what to do (no bitsandbytes install needed)."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import RECORDS, make_model, save_model, write_json
from layergrad.cli import main
from layergrad.config import RunConfig
from layergrad.inputs.models import LoadedModel, ModelError, load_model, quantization_of, refuse_quantized
from layergrad.run import engine


def test_an_unquantised_model_is_not_refused(tokenizer):
    model = make_model("llama", len(tokenizer))
    assert quantization_of(model) is None
    refuse_quantized(model)  # no error


@pytest.mark.parametrize("qc, method", [
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes"),
    ({"load_in_8bit": True}, "bitsandbytes"),  # older configs: no quant_method
    ({"quant_method": "gptq", "bits": 4}, "gptq"),
    ({"quant_method": "awq", "bits": 4}, "awq"),
])
def test_a_config_attribute_names_the_method(tokenizer, qc, method):
    model = make_model("llama", len(tokenizer))
    model.config.quantization_config = qc
    with pytest.raises(ModelError, match=rf"is quantised \({method}\).*Use the unquantised weights"):
        refuse_quantized(model)


def test_quantiser_attributes_and_module_types_are_detected(tokenizer):
    model = make_model("llama", len(tokenizer))
    model.hf_quantizer = type("Q", (), {"quantization_config": {"quant_method": "awq"}})()
    assert quantization_of(model) == "awq"
    model = make_model("llama", len(tokenizer))
    model.is_loaded_in_4bit = True
    assert quantization_of(model) == "bitsandbytes"
    model = make_model("llama", len(tokenizer))
    model.config.quantization_config = {"quant_method": "gguf", "dequantize": True}  # a GGUF loaded de-quantised
    assert quantization_of(model) is None
    model.model.layers[1].mlp.up_proj.weight = torch.nn.Parameter(torch.zeros(24, 16, dtype=torch.int8), requires_grad=False)
    assert quantization_of(model) == "Linear with int8 weights"
    model = make_model("llama", len(tokenizer))
    Linear4bit = type("Linear4bit", (torch.nn.Linear,), {})  # bitsandbytes' class, by name
    model.model.layers[0].self_attn.q_proj = Linear4bit(16, 16)
    assert quantization_of(model) == "bitsandbytes"


def test_engine_refuses_a_quantised_model_before_anything_is_written(tmp_path, tokenizer):
    model = make_model("llama", len(tokenizer))
    model.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    cfg = RunConfig(data=[str(write_json(tmp_path / "d.json", RECORDS))], out=str(tmp_path / "out"), progress=False)
    with pytest.raises(ModelError, match=r"quantised \(bitsandbytes\)"):
        engine.run(cfg, loaded=LoadedModel(model=model, tokenizer=tokenizer, source="t", path="t", fingerprint="fp",
                                           dtype="float64"))
    assert not (tmp_path / "out").exists()


def test_a_quantised_folder_is_refused_by_the_cli_before_loading(tmp_path, tokenizer, capsys):
    folder = save_model(tmp_path, "llama", tokenizer)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"quantised \(bitsandbytes\)"):
        load_model(folder)
    data = write_json(tmp_path / "d.json", RECORDS)
    code = main(["run", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "quantised (bitsandbytes)" in err and "unquantised weights" in err and "Traceback" not in err
