"""What a run takes in: data records and their validation (:mod:`.data`), the text and response
tokens of an example (:mod:`.prompting`), the built-in fast/slow data (:mod:`.synthetic`), model
loading (:mod:`.models`), the examples a run selects (:mod:`.dataset`), and which gradients of a
model are measured, with their layer and role (:mod:`.targets`).

May import: the standard library, torch/transformers, and :mod:`layergrad.errors`,
:mod:`layergrad.vocab`, :mod:`layergrad.atomic`, :mod:`layergrad.config`. Nothing here runs a
backward pass or writes results.
"""
