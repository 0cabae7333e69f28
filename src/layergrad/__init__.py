"""layergrad: exact per-example, layer-wise gradient spectra of LLM fine-tuning data."""
__version__ = "0.1.0"
