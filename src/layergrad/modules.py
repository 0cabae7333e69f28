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

from .errors import LayergradError
from .vocab import closest

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


@dataclass(frozen=True)
class Target:
    """One measured module."""

    name: str  # module path, e.g. model.layers.0.self_attn.q_proj
    module: nn.Module
    layer: int  # decoder layer index, -1 outside the layer stack
    role: str
    out_features: int
    in_features: int
    adapter: str  # adapter name (linear, conv1d)

    @property
    def param(self) -> str:
        return f"{self.name}.weight"


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


def find_targets(model: nn.Module, select: str = "all") -> list[Target]:
    """The modules to measure, in the model's order. Raises if nothing matches."""
    roles = parse_selection(select)
    found = []
    for name, mod in model.named_modules():
        ad = adapter_for(mod)
        if ad is None or getattr(mod, "weight", None) is None or mod.weight.dim() != 2:
            continue
        role = role_of(name)
        out, inp = ad.shape(mod)
        take = role in roles or ("reference" in roles and role != "lm_head" and _is_reference(name, out, inp))
        if take:
            found.append(Target(name, mod, layer_of(name), role, out, inp, ad.name))
    if not found:
        present = sorted({role_of(n) for n, m in model.named_modules() if adapter_for(m) is not None})
        raise SelectionError(
            f"no module of {type(model).__name__} matches --modules {select!r}; roles present: {', '.join(present) or 'none'}"
        )
    return found
