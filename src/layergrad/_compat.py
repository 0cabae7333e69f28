"""Old import paths of modules that moved into subpackages (layergrad 0.1's flat layout).

``import layergrad.engine`` (or ``from layergrad import engine``) gives the very module object of
``layergrad.run.engine``, so attributes read or patched through either name are the same. New code
imports the new paths; this table is the only place that knows the old ones.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

#: old module name -> where it lives now
MOVED = {
    "layergrad.batching": "layergrad.run.plan",
    "layergrad.capture": "layergrad.measure.capture",
    "layergrad.data": "layergrad.inputs.data",
    "layergrad.distributed": "layergrad.run.distributed",
    "layergrad.engine": "layergrad.run.engine",
    "layergrad.faults": "layergrad.run.faults",
    "layergrad.ifd": "layergrad.run.ifd",
    "layergrad.loss": "layergrad.run.loss",
    "layergrad.merge": "layergrad.store.merge",
    "layergrad.merge_cli": "layergrad.cli.merge",
    "layergrad.models": "layergrad.inputs.models",
    "layergrad.modules": "layergrad.inputs.targets",
    "layergrad.oracle": "layergrad.measure.oracle",
    "layergrad.prompting": "layergrad.inputs.prompting",
    "layergrad.reference": "layergrad.store.paper",
    "layergrad.report.cli": "layergrad.cli.report",
    "layergrad.selection": "layergrad.analysis.selection",
    "layergrad.selection_cli": "layergrad.cli.select",
    "layergrad.spectral": "layergrad.spectra",
    "layergrad.synthetic": "layergrad.inputs.synthetic",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])  # the real module, not a copy

    def exec_module(self, module) -> None:
        pass


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
