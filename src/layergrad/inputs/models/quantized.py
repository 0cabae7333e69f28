"""The refusal of quantised models (bitsandbytes, GPTQ, AWQ, ...): their weights are integer codes, so the
exact spectra of a weight's gradient have no meaning there (see :mod:`layergrad.inputs.models`)."""
from __future__ import annotations

import torch

from layergrad.inputs.models.errors import ModelError

#: Class names of quantised linear modules (bitsandbytes, auto-gptq/gptqmodel, autoawq, HQQ, EETQ, ...).
QUANTIZED_MODULES = {"Linear4bit": "bitsandbytes", "Linear8bitLt": "bitsandbytes", "QuantLinear": "gptq",
                     "WQLinear_GEMM": "awq", "WQLinear_GEMV": "awq", "WQLinear": "awq", "HQQLinear": "hqq",
                     "EetqLinear": "eetq", "QLinear": "quanto"}


def _quant_method(qc) -> str:
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    method = getattr(method, "value", method)  # transformers' QuantizationMethod enum
    if isinstance(qc, dict) and not method:
        method = "bitsandbytes" if qc.get("load_in_4bit") or qc.get("load_in_8bit") else None
    return str(method or "unknown")


def quantization_of(model=None, config: dict | None = None) -> str | None:
    """The quantisation method of a loaded model (or of a config.json dict), ``None`` when unquantised.

    A GGUF entry (``quant_method`` ``gguf``) is no refusal by itself: :func:`load_model` loads a GGUF
    file de-quantised into plain floating-point weights; the module scan (quantised classes, or a
    weight that is no floating-point tensor) still catches weights left in blocks.
    """
    if config is not None:
        qc = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config")
        method = _quant_method(qc) if qc else None
        return None if method == "gguf" else method
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    if qc and _quant_method(qc) != "gguf":
        return _quant_method(qc)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and _quant_method(getattr(quantizer, "quantization_config", None) or {}) != "gguf":
        return _quant_method(getattr(quantizer, "quantization_config", None) or {})
    if getattr(model, "is_loaded_in_4bit", False) is True or getattr(model, "is_loaded_in_8bit", False) is True:
        return "bitsandbytes"
    for module in model.modules() if hasattr(model, "modules") else ():
        for cls in type(module).__mro__:
            if cls.__name__ in QUANTIZED_MODULES:
                return QUANTIZED_MODULES[cls.__name__]
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2 and not weight.is_floating_point():
            return f"{type(module).__name__} with {str(weight.dtype).removeprefix('torch.')} weights"
    return None


def refuse_quantized(model=None, *, config: dict | None = None, what: str = "the model") -> None:
    """Raise :class:`ModelError` for a quantised model (see the module docstring)."""
    method = quantization_of(model, config)
    if method is not None:
        raise ModelError(f"{what} is quantised ({method}); layergrad measures exact gradients of the weight matrices, "
                         "which a quantised model stores as integer codes. Use the unquantised weights (the original "
                         "fp32/bf16/fp16 checkpoint, e.g. the repo the quantised one was made from)")
