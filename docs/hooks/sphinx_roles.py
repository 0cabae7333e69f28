"""Griffe extension for the API reference: Sphinx roles in docstrings as code spans.

The docstrings write ``:mod:`layergrad.store```, ``:func:`load_results```, ...; Markdown has no
roles, so mkdocstrings would print them as typed. Each becomes a code span (``~`` and a leading
``.`` of a relative name dropped), which reads as the name it refers to.
"""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|exc|obj|const):`~?\.?([^`]+)`")


def _plain(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: ARG002 (griffe's hook signature)
        _plain(obj)

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:  # noqa: ARG002 (the top package gets no on_object)
        _plain(pkg)
