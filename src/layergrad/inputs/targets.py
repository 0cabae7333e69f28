"""Which linear modules of a model are measured, with their layer and role.

Two registries, each in one place:

* adapters by module type (looked up along the class hierarchy, so subclasses such as PEFT
  or quantised linears are found): how to read a module's weight shape and parameter;
* roles by module path (data, not code): which architecture's module plays q, k, v, o, ...

A linear module of an architecture missing from the role table is still measured, with
role ``unknown``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from layergrad.errors import LayergradError
from layergrad.vocab import closest

# ---------------------------------------------------------------------------------------
# Adapters: module type -> (out_features, in_features) of the weight as a linear map
# ---------------------------------------------------------------------------------------

_ADAPTERS: dict[type, "Adapter"] = {}


@dataclass(frozen=True)
class Adapter:
    name: str
    shape: Callable[[nn.Module], tuple[int, int]]  # (out_features, in_features) of y = x W^T


def register_adapter(cls: type, name: str):
    """Register how to read a module type; the decorated function returns ``(out, in)``."""

    def deco(fn):
        _ADAPTERS[cls] = Adapter(name, fn)
        return fn

    return deco


@register_adapter(nn.Linear, "linear")
def _linear_shape(m: nn.Linear) -> tuple[int, int]:
    """``nn.Linear``: weight ``(out, in)``, ``y = x W^T + b``."""
    return int(m.weight.shape[0]), int(m.weight.shape[1])


try:  # transformers' GPT-2 style Conv1D
    from transformers.pytorch_utils import Conv1D

    @register_adapter(Conv1D, "conv1d")
    def _conv1d_shape(m) -> tuple[int, int]:
        """``transformers`` ``Conv1D`` (GPT-2): weight stored transposed, ``(in, out)``; ``y = x W + b``.

        Its gradient is ``X^T D``, the transpose of ``D^T X``: the same singular values.
        """
        return int(m.weight.shape[1]), int(m.weight.shape[0])

except ImportError:  # pragma: no cover - transformers is a dependency
    pass


def adapter_for(module: nn.Module) -> Adapter | None:
    for cls in type(module).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls]
    return None


# ---------------------------------------------------------------------------------------
# Roles: module path -> role (first match wins)
# ---------------------------------------------------------------------------------------

#: (regular expression on the module path, role). Llama, Mistral, Qwen2, Gemma/Gemma2/3,
#: Phi-3 (fused qkv_proj, gate_up_proj), GPT-2 (Conv1D c_attn, c_proj, c_fc),
#: GPT-NeoX (query_key_value, dense, dense_h_to_4h, dense_4h_to_h), OPT/Phi (fc1, fc2, out_proj).
ROLE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"(^|\.)q_proj$", "q"),
    (r"(^|\.)k_proj$", "k"),
    (r"(^|\.)v_proj$", "v"),
    (r"(^|\.)(o_proj|out_proj)$", "o"),
    (r"(^|\.)(qkv_proj|query_key_value|c_attn|Wqkv)$", "qkv"),
    (r"(^|\.)attention\.dense$", "o"),
    (r"(^|\.)(self_attn|attn)\.(dense|c_proj)$", "o"),
    (r"(^|\.)gate_up_proj$", "gate_up"),
    (r"(^|\.)(gate_proj|w1)$", "gate"),
    (r"(^|\.)(up_proj|w3|c_fc|fc1|dense_h_to_4h)$", "up"),
    (r"(^|\.)(down_proj|w2|fc2|dense_4h_to_h)$", "down"),
    (r"(^|\.)mlp\.c_proj$", "down"),
    (r"(^|\.)lm_head$", "lm_head"),
)
_ROLE_RES = tuple((re.compile(p), r) for p, r in ROLE_PATTERNS)

ROLE_GROUPS = {
    "attn": ("q", "k", "v", "o", "qkv"),
    "mlp": ("gate", "up", "down", "gate_up"),
}
ROLES = ("q", "k", "v", "o", "qkv", "gate", "up", "down", "gate_up", "lm_head", "unknown")
#: Canonical order of roles inside one layer (for tables and figures).
ROLE_ORDER = {r: i for i, r in enumerate(ROLES)}

_LAYER = re.compile(r"\.(\d+)(\.|$)")


def role_of(path: str) -> str:
    for rx, role in _ROLE_RES:
        if rx.search(path):
            return role
    return "unknown"


def layer_of(path: str) -> int:
    m = _LAYER.search(path)
    return int(m.group(1)) if m else -1


# ---------------------------------------------------------------------------------------
# Targets and selection
# ---------------------------------------------------------------------------------------


Ranges = tuple[tuple[int, int], ...]  # half-open (start, stop) ranges of a module's output features


@dataclass(frozen=True)
class Target:
    """One measured gradient: a module's weight, or one role's rows of a fused weight.

    ``out_rows`` (a role of a fused module, see :data:`FUSED_LAYOUTS`): the output features of
    ``module`` that the forward hands to this role, as ``(start, stop)`` ranges; the role's
    gradient is ``G_r = D_r^T X`` with ``D_r`` those columns of the output gradient ``D``, exactly
    the rows ``G[rows]`` of the fused weight's gradient. ``None``: the whole module.

    ``tied``: the path of the input-embedding module whose weight IS this module's weight (a tied
    output head). The parameter's gradient is then the sum over both uses,
    ``G = D_head^T X_head + onehot(ids)^T (c * D_emb)`` (``c`` the embedding's scale), measured as
    two calls stacked on the token axis (:mod:`layergrad.measure.capture`).
    """

    name: str  # row name: module path, plus "[role]" for a role of a fused module
    module: nn.Module
    layer: int  # decoder layer index, -1 outside the layer stack
    role: str
    out_features: int  # of this target (a fused role: its rows only)
    in_features: int
    adapter: str  # adapter name (linear, conv1d)
    out_rows: Ranges | None = None
    tied: str | None = None
    path: str | None = None  # module path (the hook site); None: same as name

    @property
    def module_path(self) -> str:
        return self.path or self.name

    @property
    def param(self) -> str:
        return f"{self.module_path}.weight"


# ---------------------------------------------------------------------------------------
# Fused modules: which output rows each role owns (data, per architecture)
# ---------------------------------------------------------------------------------------


def _heads(cfg) -> tuple[int, int, int]:
    """``(n_heads, n_kv_heads, head_dim)`` of a (text) config."""
    n = int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head"))
    kv = int(getattr(cfg, "num_key_value_heads", None) or n)
    hidden = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))
    hd = int(getattr(cfg, "head_dim", None) or hidden // n)
    return n, kv, hd


def _blocks(sizes: list[tuple[str, int]]) -> dict[str, Ranges]:
    out, at = {}, 0
    for role, size in sizes:
        out[role] = ((at, at + size),)
        at += size
    return out


def _qkv_blocks(cfg, out: int) -> dict[str, Ranges]:
    """Rows ``[q (n_heads*hd) | k (n_kv*hd) | v (n_kv*hd)]`` (Phi-3 ``qkv_proj``: ``qkv[..., :query_pos]``, ...)."""
    n, kv, hd = _heads(cfg)
    return _blocks([("q", n * hd), ("k", kv * hd), ("v", kv * hd)])


def _halves(roles: tuple[str, ...]):
    """Equal consecutive blocks in ``roles`` order (Phi-3 ``gate_up_proj``: ``chunk(2)``; GPT-2 ``c_attn``: ``split(n_embd)``)."""

    def layout(cfg, out: int) -> dict[str, Ranges]:
        return _blocks([(r, out // len(roles)) for r in roles]) if out % len(roles) == 0 else {}

    return layout


def _per_head_qkv(cfg, out: int) -> dict[str, Ranges]:
    """Rows grouped per head, ``[q | k | v]`` of ``head_size`` each (GPT-NeoX: ``view(..., n_heads, 3 * hs)``, ``chunk(3)``)."""
    n, _, hd = _heads(cfg)
    return {r: tuple((h * 3 * hd + j * hd, h * 3 * hd + (j + 1) * hd) for h in range(n)) for j, r in enumerate(("q", "k", "v"))}


#: (model types, regular expression on the module path, layout): each layout maps a config and the
#: module's output size to ``{role: rows}``. Confirmed against each model's forward in transformers 5.x.
FUSED_LAYOUTS: tuple[tuple[tuple[str, ...], str, Callable], ...] = (
    (("phi3",), r"(^|\.)qkv_proj$", _qkv_blocks),
    (("phi3",), r"(^|\.)gate_up_proj$", _halves(("gate", "up"))),
    (("gpt2",), r"(^|\.)attn\.c_attn$", _halves(("q", "k", "v"))),
    (("gpt_neox",), r"(^|\.)attention\.query_key_value$", _per_head_qkv),
)
_FUSED_RES = tuple((types, re.compile(p), fn) for types, p, fn in FUSED_LAYOUTS)


def fused_roles(model_type: str | None, cfg, path: str, out: int) -> dict[str, Ranges]:
    """``{role: rows}`` of a fused module whose layout is known; ``{}`` otherwise (measured whole)."""
    for types, rx, fn in _FUSED_RES:
        if model_type in types and rx.search(path):
            layout = fn(cfg, out)
            covered = sorted(r for rows in layout.values() for r in rows)
            if covered and covered[0][0] == 0 and covered[-1][1] == out and all(a[1] == b[0] for a, b in zip(covered, covered[1:])):
                return layout
            return {}  # sizes disagree with the weight: measure it whole rather than guess
    return {}


class SelectionError(LayergradError, ValueError):
    pass


def parse_selection(spec: str) -> set[str]:
    """``attn``, ``mlp``, ``all``, ``reference`` or a comma list of roles/groups -> set of roles.

    ``all`` is every role except ``lm_head`` (ask for it by name: ``all,lm_head``);
    ``reference`` is the paper's rule (2-D weights that are square or inside ``self_attn``)
    and is resolved per module by :func:`find_targets`.
    """
    roles: set[str] = set()
    for word in (w.strip() for w in spec.split(",")):
        if not word:
            continue
        if word == "all":
            roles |= set(ROLES) - {"lm_head"}
        elif word == "reference":
            roles.add("reference")
        elif word in ROLE_GROUPS:
            roles |= set(ROLE_GROUPS[word])
        elif word in ROLES:
            roles.add(word)
        else:
            choices = list(ROLES) + list(ROLE_GROUPS) + ["all", "reference"]
            stem = re.sub(r"_?proj$", "", word)  # qproj, q_proj -> q
            close = stem if stem in ROLES else closest(word, choices, cutoff=0.5)
            hint = f"; did you mean '{close}'?" if close else ";"
            raise SelectionError(f"unknown role '{word}'{hint} available: {', '.join(choices)}")
    if not roles:
        raise SelectionError("empty --modules selection; use attn, mlp, all or a list of roles such as q,k,v")
    return roles


def _is_reference(path: str, out: int, inp: int) -> bool:
    return out == inp or "self_attn" in path


def _text_config(model: nn.Module):
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        return cfg.get_text_config()
    return cfg


def _embeddings(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """``(output head, input embedding)`` as the model names them (``get_output_embeddings``), else ``None``."""
    get = lambda name: getattr(model, name)() if callable(getattr(model, name, None)) else None  # noqa: E731
    try:
        return get("get_output_embeddings"), get("get_input_embeddings")
    except (AttributeError, NotImplementedError):
        return None, None


#: PEFT's LoRA wrappers: ``<module>.lora_A.<adapter>`` / ``<module>.lora_B.<adapter>`` (nn.Linear each),
#: inside ``base_model.model.`` (PeftModel, LoraModel). Their names drop both, so that rows name the
#: adapted module as the plain model does: ``model.layers.0.self_attn.q_proj.lora_A``.
_LORA = re.compile(r"^(?P<module>.+)\.(?P<factor>lora_A|lora_B)\.(?P<adapter>[^.]+)$")
_PEFT_PREFIX = re.compile(r"^(base_model\.model\.)+")


def lora_targets(model: nn.Module, select: str = "all") -> list[Target]:
    """The LoRA factors of an unmerged PEFT model: each adapted module's ``lora_A`` (``r x in``) and
    ``lora_B`` (``out x r``), role ``q.lora_A``, ``q.lora_B``, ... for the adapted module's role.

    Their hooks see exactly what autograd uses: ``lora_A``'s input is ``X`` (dropout is off in eval
    mode) and its output gradient ``s D B``; ``lora_B``'s input is ``X_a = X A^T`` and its output
    gradient ``s D`` (peft's forward is ``base(x) + lora_B(lora_A(dropout(x))) * s``), so the
    measured gradients are ``G_A = s (D B)^T X`` and ``G_B = s D^T X_a``.
    """
    roles = parse_selection(select)
    found = []
    for path, mod in model.named_modules():
        m = _LORA.match(path)
        if m is None or adapter_for(mod) is None or getattr(mod, "weight", None) is None:
            continue
        module = _PEFT_PREFIX.sub("", m.group("module"))
        role = role_of(module)
        if role not in roles and not ("reference" in roles and "self_attn" in module):
            continue
        out, inp = adapter_for(mod).shape(mod)
        found.append(Target(f"{module}.{m.group('factor')}", mod, layer_of(module), f"{role}.{m.group('factor')}",
                            out, inp, adapter_for(mod).name, path=path))
    if not found:
        raise SelectionError(f"no LoRA matrix of {type(model).__name__} matches --modules {select!r}")
    return found


def has_lora(model: nn.Module) -> bool:
    return any(_LORA.match(path) for path, _ in model.named_modules())


def find_targets(model: nn.Module, select: str = "all") -> list[Target]:
    """The gradients to measure, in the model's order. Raises if nothing matches.

    The output head is found as ``model.get_output_embeddings()`` whatever its name (``lm_head``,
    ``embed_out``, ``output``) and has role ``lm_head``; ``tied`` names the input embedding when the
    two share their weight. A fused module of a known layout (:data:`FUSED_LAYOUTS`) gives one
    target per selected role (``q``, ``k``, ``v``; ``gate``, ``up``); it is measured whole (role
    ``qkv`` or ``gate_up``) when that role is asked for by name, or when its layout is unknown.
    The paper's rule (``reference``) takes whole weights, as its script does.

    An unmerged PEFT LoRA model (what ``--adapter-params`` loads) gives its LoRA factors instead
    (:func:`lora_targets`).
    """
    if has_lora(model):
        return lora_targets(model, select)
    roles = parse_selection(select)
    named = {w.strip() for w in select.split(",")}
    cfg = _text_config(model)
    model_type = getattr(cfg, "model_type", None) or getattr(getattr(model, "config", None), "model_type", None)
    head, emb = _embeddings(model)
    paths = {id(m): n for n, m in model.named_modules()}
    tied = None
    if head is not None and emb is not None and getattr(head, "weight", None) is not None and head.weight is getattr(emb, "weight", None):
        tied = paths.get(id(emb))
    found = []
    for name, mod in model.named_modules():
        ad = adapter_for(mod)
        if ad is None or getattr(mod, "weight", None) is None or mod.weight.dim() != 2:
            continue
        is_head = mod is head or (head is None and role_of(name) == "lm_head")
        role = "lm_head" if is_head else role_of(name)
        if role == "lm_head" and not is_head:
            role = "unknown"
        out, inp = ad.shape(mod)
        layer = layer_of(name)
        if "reference" in roles:
            if role != "lm_head" and _is_reference(name, out, inp):
                found.append(Target(name, mod, layer, role, out, inp, ad.name))
            continue
        parts = fused_roles(model_type, cfg, name, out) if role in ("qkv", "gate_up") else {}
        if parts:
            if role in named:  # the fused matrix as a whole, on request
                found.append(Target(name, mod, layer, role, out, inp, ad.name))
            for r, rows in parts.items():
                if r in roles:
                    size = sum(b - a for a, b in rows)
                    found.append(Target(f"{name}[{r}]", mod, layer, r, size, inp, ad.name, out_rows=rows, path=name))
        elif role in roles:
            found.append(Target(name, mod, layer, role, out, inp, ad.name, tied=tied if is_head else None))
    if not found:
        present = sorted({role_of(n) for n, m in model.named_modules() if adapter_for(m) is not None})
        raise SelectionError(
            f"no module of {type(model).__name__} matches --modules {select!r}; roles present: {', '.join(present) or 'none'}"
        )
    return found
