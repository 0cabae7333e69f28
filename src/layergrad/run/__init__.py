"""The run: batches planned by length (:mod:`.plan`), the per-example loss (:mod:`.loss`), one
batch's forward and activation-only backward with the logit gather and the IFD pass
(:mod:`.step`, :mod:`.ifd`), faults and out-of-memory back-off (:mod:`.faults`), torchrun and
shards (:mod:`.distributed`), and the loop that reads in one screen: plan, resume, step, write
(:mod:`.engine`).

May import: :mod:`layergrad.inputs`, :mod:`layergrad.measure`, :mod:`layergrad.store`,
:mod:`layergrad.config`. This ``__init__`` imports nothing, so ``python -m layergrad`` can set up
devices before torch is imported.
"""
