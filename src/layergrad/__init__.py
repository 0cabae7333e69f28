"""layergrad: exact per-example, layer-wise gradient spectra of LLM fine-tuning data.

The package, following the data (each subpackage's docstring says what it holds and may import):
:mod:`layergrad.inputs` (data, prompts, models, targets) -> :mod:`layergrad.measure` (hooks and
the statistics sink, on the math of :mod:`layergrad.spectra`) -> :mod:`layergrad.run` (the loop)
-> :mod:`layergrad.store` (Parquet parts) -> :mod:`layergrad.analysis` -> :mod:`layergrad.report`;
:mod:`layergrad.cli` is the command line.
"""
__version__ = "0.1.0"
__all__ = ["__version__"]
