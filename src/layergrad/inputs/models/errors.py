"""The error every model-loading failure raises, and the sentence that says what a model may be."""
from __future__ import annotations

from layergrad.errors import LayergradError


class ModelError(LayergradError, ValueError):
    """A model could not be found or loaded; the message names the path and what to do."""


_EXPECTED = ('expected a hub id org/name[@REV], a folder with config.json (as save_pretrained writes), a .gguf file, '
             'or "default"')
