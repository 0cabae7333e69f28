"""The raw score of a ``transformers`` sequence-classification reward model on each conversation.

As the follow-up paper's ``metrics/cal_reward.py`` (``sfairXC/FsfairX-LLaMA3-RM-v0.1``, a
``text-classification`` pipeline with ``function_to_apply="none"``): the conversation
``[user: instruction, assistant: output]`` (a chat record: its turns, then the response) is
written with the reward model's own chat template, ``apply_chat_template(chat, tokenize=False)``,
every occurrence of the BOS text is removed (the tokenizer adds the BOS again, as released), the
text is tokenised with special tokens, and the score is the model's output logit ``head`` (0 for
a one-output model) at the token the model pools (its own rule: the last token that is not its
pad token), with no activation: the raw logit.

Batches are padded on the LEFT with explicit position ids, so each example's pooled token and
positions are those of the example alone: with a configured pad token the model's "rightmost
non-pad token" finds the same token; a model without one pools the last token, and a batch gets a
temporary pad id that is none of its rows' last tokens (the configuration is restored after).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from pathlib import Path

import pyarrow as pa

from layergrad.errors import LayergradError

__all__ = ["RewardModelError", "RewardScorer", "load_reward_model", "reward_text"]


class RewardModelError(LayergradError, ValueError):
    """A reward model that cannot be used (not a sequence-classification model, no chat template, ...)."""


COLUMNS = [
    pa.field("reward", pa.float64()),  # the reward model's raw output logit (head `reward_head`)
    pa.field("reward_n_tokens", pa.int32()),  # tokens of the formatted conversation
    pa.field("reward_reason", pa.string()),  # why reward is NaN (null when defined)
]


def _resolve(name: str, revision: str | None) -> tuple[Path, str | None, str | None]:
    """``(folder, repo id, commit)`` of a local folder or a hub id (through the HF cache)."""
    from layergrad.inputs.models import is_hub_id, parse_model_ref, resolve_hub_model

    if is_hub_id(name):
        repo, rev = parse_model_ref(name, revision)
        folder, commit = resolve_hub_model(repo, rev, None)
        return folder, repo, commit
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise RewardModelError(f"--reward-model {name!r}: no such folder with config.json and no hub id org/name; "
                               "pass a sequence-classification reward model (a folder or org/name[@REV])")
    return path, None, None


def folder_digest(folder: Path) -> str:
    """SHA-256 of a model folder's config.json and the names and sizes of its other files (cheap; any
    re-saved or changed checkpoint gets another one)."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name != "config.json":
            h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()


def load_reward_model(name: str, *, revision: str | None = None, dtype: str = "auto", device: str = "cpu"):
    """``(model, tokenizer, provenance)``; :class:`RewardModelError` for a model that is no reward model."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from layergrad.inputs.models import hub_offline, resolve_dtype

    folder, repo, commit = _resolve(name, revision)
    src = repo or str(folder)
    hub = {"revision": commit, "local_files_only": hub_offline()} if repo else {"local_files_only": True}
    try:
        config = AutoConfig.from_pretrained(src, **hub)
    except Exception as e:  # noqa: BLE001 - any failure to read the config means "cannot load"
        raise RewardModelError(f"--reward-model {name!r}: cannot read its config ({type(e).__name__}: {e})") from None
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise RewardModelError(
            f"--reward-model {name!r} is not a sequence-classification model (its config names "
            f"{', '.join(archs) or 'no architecture'}); a reward model is an *ForSequenceClassification checkpoint "
            "(e.g. sfairXC/FsfairX-LLaMA3-RM-v0.1). A causal LM scores IFD: pass it as --ifd-model")
    want = resolve_dtype(dtype)
    if want == "auto":  # as load_model: fp32 on CPU (fp64 checkpoints stay fp64), the checkpoint's dtype elsewhere
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        fp64 = str(stored).removeprefix("torch.") == "float64"
        want = (torch.float64 if fp64 else torch.float32) if torch.device(device).type == "cpu" else "auto"
    try:
        model = AutoModelForSequenceClassification.from_pretrained(src, dtype=want, **hub)
        tokenizer = AutoTokenizer.from_pretrained(src, **hub)
    except Exception as e:  # noqa: BLE001
        raise RewardModelError(f"could not load reward model {name!r}: {type(e).__name__}: {e}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise RewardModelError(f"reward model {name!r} has no chat template; the conversation is written with the "
                               "reward model's own template (add chat_template to its tokenizer_config.json)")
    model.to(device).eval()
    prov = {"score": "reward", "model": name, "model_repo": repo, "model_revision": commit,
            "model_fingerprint": folder_digest(Path(folder)), "dtype": str(model.dtype).removeprefix("torch."),
            "architecture": archs[0], "num_labels": int(model.config.num_labels),
            "labels": {str(k): v for k, v in (model.config.id2label or {}).items()}}
    return model, tokenizer, prov


def reward_text(tokenizer, ex) -> str:
    """The conversation in the reward model's chat template, BOS text removed (see the module docstring)."""
    if ex.is_text:
        raise RewardModelError(f"{ex.source}: record {ex.index}: a plain-text record has no conversation to reward")
    turns = list(ex.messages) if ex.is_chat else [{"role": "user", "content": ex.prompt or ""}]
    chat = [*({"role": m["role"], "content": m["content"]} for m in turns), {"role": "assistant", "content": ex.response}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)
    return text.replace(tokenizer.bos_token, "") if tokenizer.bos_token else text


@contextlib.contextmanager
def _pad_config(model, pad_id):
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    old = cfg.pad_token_id
    cfg.pad_token_id = pad_id
    try:
        yield
    finally:
        cfg.pad_token_id = old


class RewardScorer:
    name = "reward"
    columns = COLUMNS

    def __init__(self, model, tokenizer, provenance: dict, *, head: int | None = None, batch_size: int = 8,
                 max_batch_tokens: int = 16384, max_pad: float | None = 0.1, device="cpu"):
        n = int(model.config.num_labels)
        if head is None:
            if n != 1:
                labels = ", ".join(f"{k}={v}" for k, v in sorted((model.config.id2label or {}).items()))
                raise RewardModelError(f"reward model {provenance['model']!r} has {n} outputs ({labels}); "
                                       "choose one with --reward-head N")
            head = 0
        if not 0 <= head < n:
            raise RewardModelError(f"--reward-head {head}: the reward model has outputs 0-{n - 1}")
        self.model, self.tokenizer, self.head = model, tokenizer, head
        self.prov = {**provenance, "head": head, "head_label": (model.config.id2label or {}).get(head)}
        self.batch_size, self.max_batch_tokens, self.max_pad, self.device = batch_size, max_batch_tokens, max_pad, device

    def provenance(self) -> dict:
        return dict(self.prov)

    def identity(self) -> dict:
        return {k: self.prov[k] for k in ("model_fingerprint", "model_revision", "dtype", "head")}

    def score(self, examples, progress=None) -> list[dict]:
        import torch

        from layergrad.run.plan import plan_batches

        seqs = [self.tokenizer(reward_text(self.tokenizer, ex))["input_ids"] for ex in examples]
        out: list[dict | None] = [None] * len(seqs)
        todo = [k for k, s in enumerate(seqs) if s]
        for k, s in enumerate(seqs):
            if not s:
                out[k] = {"reward": math.nan, "reward_n_tokens": 0, "reward_reason": "the conversation has no tokens"}
        cfg_pad = (self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config")
                   else self.model.config).pad_token_id
        for b in plan_batches([len(seqs[k]) for k in todo], self.batch_size, self.max_batch_tokens, self.max_pad):
            ks = [todo[i] for i in b.items]
            rows = [seqs[k] for k in ks]
            pad_id = cfg_pad if cfg_pad is not None else min(set(range(len(rows) + 1)) - {r[-1] for r in rows})
            t = max(len(r) for r in rows)
            ids = torch.full((len(rows), t), pad_id, dtype=torch.long)  # (n, t), left padding
            mask = torch.zeros((len(rows), t), dtype=torch.long)
            for r, s in enumerate(rows):
                ids[r, t - len(s):] = torch.tensor(s)
                mask[r, t - len(s):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # each row's own positions 0..len-1
            with torch.no_grad(), (_pad_config(self.model, pad_id) if cfg_pad is None else contextlib.nullcontext()):
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    position_ids=pos.to(self.device), use_cache=False).logits  # (n, num_labels)
            vals = logits[:, self.head].double().cpu()
            for j, k in enumerate(ks):
                v = float(vals[j])
                out[k] = {"reward": v, "reward_n_tokens": len(rows[j]),
                          "reward_reason": None if math.isfinite(v) else f"the model's output is not finite ({v})"}
            if progress is not None:
                progress(len(ks))
        return out  # type: ignore[return-value]
