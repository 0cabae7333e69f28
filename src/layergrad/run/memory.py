"""A batch's peak memory, estimated before it runs, and the budget batches are planned under.

:func:`estimate_batch_bytes` is a *model* of the peak, not a measurement: a sum of the tensors a
padded forward plus an activation-only backward keeps alive, counted from the model's config and
the measured targets, with no tensor operation. It is meant to be conservative (to over-count):
every count below is an upper bound of what the code holds at once, not a typical figure.

For a batch of ``n`` examples padded to ``t`` tokens, in bytes (``s`` the model dtype's itemsize):

* the weights, once (``model_shape.param_bytes``; the backward needs no parameter gradients);
* activations saved for the backward, per decoder layer: :data:`HIDDEN_TENSORS` tensors of
  ``(n, t, hidden)`` (residual stream, norms' inputs and outputs, q/k/v/o projections, rotary
  outputs, the attention output), :data:`FFN_TENSORS` of ``(n, t, ffn)`` (gate, up, the activation
  and the gated product) and, for eager (math) attention, :data:`ATTENTION_TENSORS` of
  ``(n, heads, t, t)`` (scores, the float32 softmax, its cast) in ``max(s, 4)`` bytes. Fused
  kernels (``sdpa``, flash) keep no ``(t, t)`` tensor per layer; one is still counted for the
  layer in flight (``sdpa``'s math fallback materialises it);
* the captured inputs ``X`` of the targets, one ``(n, t, in)`` per shared input (q/k/v share one,
  gate/up one, the roles of a fused module one) for the whole batch, and the output gradients
  ``D`` ``(n, t, out)`` of the largest layer's targets (each is consumed when it arrives), both
  in ``s`` and once more in the statistics dtype (the masked copies);
* the logits: ``(n_loss, vocab)`` when the head is gathered at the loss positions, else
  ``(n, t, vocab)``, counted :data:`LOGIT_TENSORS` times (logits, log-softmax, their gradient) in
  float32;
* the float64 Gram matrices of the examples solved at once (``parallel`` = ``min(threads, n)``; the
  batched CUDA path solves the whole batch): :data:`GRAM_MATRICES` ``(t, t)`` float64 matrices each,
  plus each example's float64 copies of one module's ``X`` and ``D`` rows;
* with ``--cosine-layers`` (``keep_all_gradients``), every target's masked ``D`` ``(n, t, out)`` in the
  statistics dtype, kept until the batch's end for the products of every pair of layers;
* :data:`SLACK` of the total on top (allocator fragmentation, temporaries not named above).

:func:`available_bytes` is what the machine has free now, and :func:`parse_bytes` reads
``--max-memory``. Splitting a batch changes no number (padding is masked out everywhere and the
Gram path works per example), so a budget changes how a run is batched, never what it stores.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

#: (n, t, hidden)-sized activations saved for the backward per decoder layer (an upper bound for
#: Llama-like layers: input, 2 norms x (in, out), q, k, v, rotary q, k, attention output, o, residual)
HIDDEN_TENSORS = 14
#: (n, t, ffn)-sized per layer: gate, up, act(gate), act(gate) * up
FFN_TENSORS = 4
#: (n, heads, t, t) per layer for eager attention: the scores, the float32 softmax, its cast
ATTENTION_TENSORS = 3
#: logits-sized float32 tensors alive at once: the logits, the log-softmax, their gradient
LOGIT_TENSORS = 3
#: (t, t) float64 matrices per example solved at once: K_X, K_D, their product, the eigensolver's workspace
GRAM_MATRICES = 4
#: fraction added for allocator fragmentation and unnamed temporaries
SLACK = 0.25
#: the share of the available memory the default budget (no ``--max-memory``) takes
DEFAULT_FRACTION = 0.8
#: attention implementations that materialise (n, heads, t, t) per layer
EAGER_ATTENTION = ("eager", None)

_GiB = 1 << 30


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model: sizes from its config, the dtype's itemsize, the weights' bytes."""

    hidden: int
    ffn: int
    layers: int
    heads: int
    vocab: int
    itemsize: int
    param_bytes: int = 0
    attention: str | None = "eager"  # config._attn_implementation


def model_shape_of(model) -> ModelShape:
    """The :class:`ModelShape` of a transformers model (its text config)."""
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    get = lambda *names, default=0: next((int(getattr(cfg, a)) for a in names if getattr(cfg, a, None)), default)  # noqa: E731
    hidden = get("hidden_size", "n_embd", "d_model")
    params = list(model.parameters())
    return ModelShape(
        hidden=hidden,
        ffn=get("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
        layers=get("num_hidden_layers", "n_layer", "num_layers"),
        heads=get("num_attention_heads", "n_head"),
        vocab=get("vocab_size"),
        itemsize=params[0].element_size() if params else 4,
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        attention=getattr(model.config, "_attn_implementation", None),
    )


_SHARED_ROLES = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}


def _input_key(t) -> tuple:
    """Targets fed the same tensor (q/k/v, gate/up, the roles of one fused module) share one captured ``X``."""
    if getattr(t, "out_rows", None) is not None:
        return ("module", id(t.module))
    group = _SHARED_ROLES.get(t.role)
    return (t.layer, group, t.in_features) if group else ("target", t.name)


def estimate_batch_bytes(n: int, t: int, model_shape: ModelShape, targets, stats_itemsize: int = 8,
                         gather: bool = True, threads: int = 1, n_loss: int | None = None,
                         queue_bytes: int = 0, keep_all_gradients: bool = False) -> int:
    """A conservative estimate of the peak bytes of one batch of ``n`` examples padded to ``t`` tokens.

    ``targets``: the measured :class:`~layergrad.inputs.targets.Target` objects (``layer``, ``role``,
    ``in_features``, ``out_features``); ``stats_itemsize``: the statistics dtype's; ``gather``: the
    head's logits only at the loss positions (``n_loss`` of them; default ``n * t``); ``threads``: the
    examples solved in parallel (at most ``n``); ``queue_bytes``: the batched path's queue of side matrices
    (``Measurer.eig_queue_bytes``), added as it is; ``keep_all_gradients``: ``--cosine-layers`` keeps every
    target's masked ``D``. See the module docstring for what is counted.
    """
    m, s = model_shape, model_shape.itemsize
    nt = n * t
    n_loss = nt if n_loss is None else min(n_loss, nt)
    attn_item = max(s, 4)
    # activations saved for the backward
    per_layer = (HIDDEN_TENSORS * m.hidden + FFN_TENSORS * m.ffn) * nt * s
    scores = n * m.heads * t * t * attn_item
    activations = m.layers * per_layer
    activations += m.layers * ATTENTION_TENSORS * scores if m.attention in EAGER_ATTENTION else scores
    # captured inputs (shared per input key) and output gradients (the largest layer's)
    targets = list(targets)
    x_feats = sum({_input_key(tg): tg.in_features for tg in targets}.values())
    d_by_layer: dict[int, int] = {}
    for tg in targets:
        d_by_layer[tg.layer] = d_by_layer.get(tg.layer, 0) + tg.out_features
    d_feats = max(d_by_layer.values(), default=0)
    captured = (x_feats + d_feats) * nt * (s + stats_itemsize)
    if keep_all_gradients:  # --cosine-layers: every target's masked D until the batch's end
        captured += (sum(tg.out_features for tg in targets) - d_feats) * nt * stats_itemsize
    # logits
    logits = (n_loss if gather else nt) * m.vocab * 4 * LOGIT_TENSORS
    # float64 Gram matrices of the examples solved at once, and their float64 rows of one module
    parallel = max(1, min(threads, n))
    widest = max((tg.in_features + tg.out_features for tg in targets), default=0)
    grams = parallel * (GRAM_MATRICES * t * t + t * widest) * 8 + queue_bytes
    batch = activations + captured + logits + grams
    return int(m.param_bytes + batch * (1 + SLACK))


# --------------------------------------------------------------------------- the budget


def available_bytes(device="cpu") -> int | None:
    """Memory free for this process now: CUDA's ``mem_get_info`` free bytes, else the kernel's
    ``MemAvailable`` (``/proc/meminfo``), else psutil's ``available``; ``None`` when unknown (MPS, ...)."""
    dev = str(device)
    if dev.startswith("cuda"):
        import torch

        try:
            free, _ = torch.cuda.mem_get_info(torch.device(dev))
            return int(free)
        except Exception:  # noqa: BLE001 - no CUDA after all: unknown
            return None
    if dev != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - not installed, or no answer
        return None


_UNITS = {"b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_bytes(text) -> tuple[str, float]:
    """``--max-memory``: ``("bytes", n)`` for a size with its unit (``12GB``, ``12GiB``, ``500M``, ``4096B``:
    decimal units K/M/G/T, binary KiB/MiB/GiB/TiB) or ``("fraction", f)`` for a number ``0 < f <= 1`` without
    a unit (of the available memory). A number above 1 without a unit is refused: ``12`` was meant as 12 GiB,
    not 12 bytes. Raises ``ValueError`` with a message for anything else."""
    raw = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(?:e(\d+))?\s*([a-zA-Z]*)", raw)
    unit = m.group(3).lower() if m else ""
    if not m or (unit and unit not in _UNITS):
        raise ValueError(f"must be a size such as 12GB, 12GiB or 500M, or a fraction of the available memory "
                         f"such as 0.8, got {text!r}")
    value = float(m.group(1)) * (10 ** int(m.group(2)) if m.group(2) else 1)
    if not unit:
        if value <= 0:
            raise ValueError(f"a fraction of the available memory must be > 0 (or give a size such as 12GB), got {text!r}")
        if value > 1:
            raise ValueError(f"{text!r} has no unit: did you mean {raw}GiB? A size needs its unit (12GB, 12GiB, "
                             f"500MiB, 4096B); a number without one is a fraction of the available memory, in (0, 1]")
        return "fraction", value
    size = value * _UNITS[unit]
    if size < 1:
        raise ValueError(f"must be at least one byte, got {text!r}")
    return "bytes", size


def budget_bytes(spec: str | None, device, resident: int = 0) -> int | None:
    """The bytes a run may use, weights included: ``spec`` as a size, or a fraction (default
    :data:`DEFAULT_FRACTION`) of the memory available now plus ``resident`` (the loaded weights,
    already out of what is available). ``None``: no spec and the available memory is unknown."""
    kind, value = parse_bytes(spec) if spec is not None else ("fraction", DEFAULT_FRACTION)
    if kind == "bytes":
        return int(value)
    free = available_bytes(device)
    return None if free is None else int(resident + value * free)


def gib(n: int) -> str:
    return f"{n / _GiB:.2f}"
