"""``LayerGradCallback``: per-example gradient spectra recorded inside real fine-tuning.

Passed in ``callbacks=[...]`` of ``transformers.Trainer`` (or TRL's ``SFTTrainer``), it measures the
examples of the training batch at every ``every_n_steps``-th optimizer step from the factors the
step already computes: each measured module's inputs ``X`` in the trainer's forward pass and its
output gradients ``D`` in the trainer's own backward pass (no second forward or backward). ``D``
is rescaled per example to the gradient of the example's own mean response-token loss
(:mod:`.rescale`), so a row means what it means in ``layergrad run``: the gradient of
``L_i = mean_{t in R_i} ce_t`` at the weights of that forward pass (``step`` optimizer updates
applied; with dropout > 0, under the step's own dropout masks).

The training is left unchanged: the hooks return ``None`` (no tensor is replaced), no parameter
flag is touched, nothing draws random numbers, and the optional probe set (:attr:`probe`, a data
file measured by ``layergrad run``'s own batch step with the model in eval mode and parameters
frozen for its backward) leaves no gradient behind. Gradient checkpointing: a layer recomputed in
the backward is not a second call (:meth:`~layergrad.measure.capture.Capture.seal`). Under torchrun
each rank writes its own parts (writer ``r<rank>``); FSDP is refused.

TRL's ``SFTTrainer``: its fused LM head returns per-token log-probabilities instead of logits; the
rescaling then reads ``alpha`` off their gradient (:func:`.rescale.fit_alpha_logprobs`).
Completion-only and assistant-only losses arrive as ``-100`` labels, so an example's response tokens
are exactly the trainer's loss tokens. Padding-free and packed batches (several examples in one row,
marked by restarting ``position_ids``) are refused, naming the option to turn off.

Live curves: at each recorded step the step's summaries (:mod:`.live`) are added to the Trainer's
logs, so every ``report_to`` backend (TensorBoard, W&B, MLflow, ...) plots them beside the loss.

Store: a normal run directory; each recorded example is one row per step, ``id`` ``"<example>@<step>"``
with the columns ``step``, ``epoch`` and ``example_id`` (:data:`layergrad.store.schema.TRAINING_FIELDS`).
A trainer's batches carry no record ids (the trainer drops unused columns), so ``example_id`` is the
content hash of the example's real tokens and labels.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path

import torch
from transformers import TrainerCallback

from layergrad import __version__, vocab
from layergrad.errors import ConfigError, LayergradError
from layergrad.inputs.targets import find_targets
from layergrad.integrations import live, rescale
from layergrad.measure.capture import Capture
from layergrad.measure.guard import FiniteGuard
from layergrad.measure.measurer import Measurer
from layergrad.run.loss import LOSS_RULE
from layergrad.store import RunStore
from layergrad.store.rows import depth_thirds, example_row, module_rows_of
from layergrad.store.schema import SCHEMA_VERSION

log = logging.getLogger(__name__)

TRAINING_NOTE = "training.json"  # DIR/training.json: the detected loss reduction and trainer multipliers


class UnsupportedTraining(LayergradError, ValueError):
    """A training setup the callback cannot measure exactly (FSDP, no labels in the model's inputs)."""


class _Rescaled:
    """A sink in front of another: ``D`` of row b times ``scales[b]`` (set from the logits' gradient)."""

    def __init__(self, sink):
        self.sink = sink
        self.scales: torch.Tensor | None = None  # (n,) float64

    def begin(self, mask, consumers, by_layer_role) -> None:
        self.scales = None
        self.sink.begin(mask, consumers, by_layer_role)

    def accept(self, target, X, D, x_key) -> None:
        if self.scales is None:
            raise rescale.RescaleError(f"{target.name}: an output gradient arrived before the logits' gradient; "
                                       "the loss is not computed from the model's logits")
        dtype = torch.promote_types(D.dtype, torch.float32)
        s = self.scales.to(device=D.device, dtype=dtype).view(-1, 1, 1)  # (n, 1, 1)
        self.sink.accept(target, X, D.to(dtype) * s, x_key)  # a new tensor: the trainer's D is untouched

    def finish(self):
        return self.sink.finish()


class LayerGradCallback(TrainerCallback):
    """Record per-example, layer-wise gradient spectra of the training batch every ``every_n_steps`` steps.

    ``out``: the run directory. ``modules``: as ``layergrad run --modules``. ``probe``: data file(s)
    measured every ``every_n_steps`` steps as group ``probe_group`` (needs the tokenizer: the
    trainer's ``processing_class``, or ``tokenizer=``). ``stats_dtype``, ``spectrum_k``, ``method``:
    as in ``layergrad run``. ``log_metrics``: the metrics whose per-role, per-third means are added
    to the Trainer's logs at each recorded step (:mod:`.live`; default nuclear norm and effective
    rank; any of :data:`.live.LOGGABLE`; ``()`` logs nothing and leaves the logging cadence alone).
    """

    def __init__(self, out, every_n_steps: int = 10, modules: str = "attn", *, group: str = "train",
                 probe=None, probe_group: str = "probe", probe_batch_size: int = 4, tokenizer=None,
                 prompt_mode: str = "auto", max_length: int | None = None, stats_dtype: str = "float32",
                 spectrum_k: int | None = 64, method: str = "auto", log_metrics=live.DEFAULT_LOG_METRICS):
        problems = []
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
            problems.append(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        if vocab.normalize_dtype_name(stats_dtype) not in vocab.STATS_DTYPES:
            problems.append(f"stats_dtype {stats_dtype!r}: choose one of {', '.join(vocab.STATS_DTYPES)}")
        if method not in vocab.METHODS:
            problems.append(f"method {method!r}: choose one of {', '.join(vocab.METHODS)}")
        bad = [m for m in log_metrics if m not in live.LOGGABLE]
        if bad:
            problems.append(f"log_metrics {bad!r}: choose among {', '.join(live.LOGGABLE)}")
        if problems:
            raise ConfigError(problems, source="LayerGradCallback")
        self.log_metrics = tuple(log_metrics)
        self._pending: dict[str, float] = {}
        self.out = Path(out)
        self.every_n_steps = every_n_steps
        self.modules = modules
        self.group = group
        self.probe = [probe] if isinstance(probe, (str, os.PathLike)) else (list(probe) if probe else [])
        self.probe_group = probe_group
        self.probe_batch_size = probe_batch_size
        self.prompt_mode = prompt_mode
        self.max_length = max_length
        self.stats_dtype = vocab.STATS_DTYPES[vocab.normalize_dtype_name(stats_dtype)]
        self.spectrum_k = spectrum_k
        self.method = method
        self._tokenizer = tokenizer
        self.reductions: dict[str, int] = {}  # detected reduction -> micro-batches
        self.multipliers: list[float] = []  # alpha * N per recorded micro-batch: what the trainer multiplied by
        self._handles: list = []
        self._capture: Capture | None = None
        self._micro: dict | None = None
        self._on = False
        self._rows: tuple[list, list] = ([], [])
        self._order = 0

    # -- the trainer's events ---------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, tokenizer=None, **kwargs):
        _refuse_unsupported(args)
        self.model = model
        self.tokenizer = self._tokenizer or processing_class or tokenizer
        self.targets = find_targets(model, self.modules)  # a selection the model lacks: SelectionError, before step 1
        paths = dict(model.named_modules())
        self.embeddings = {t.tied: paths[t.tied] for t in self.targets if t.tied is not None}
        self.by_layer_role = {(t.layer, t.role): t for t in self.targets if t.layer >= 0}
        self.rank = int(getattr(args, "process_index", 0) or 0)
        self.store = RunStore(self.out, writer=f"r{self.rank}")
        manifest = self._manifest(model, args)
        self.store.open(manifest)
        self.sink = _Rescaled(FiniteGuard(self._measurer()))
        self._probe = self._load_probe() if self.probe and self.rank == 0 else None
        self._handles = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                         model.register_forward_hook(self._post, with_kwargs=True)]
        self.thirds = depth_thirds(manifest["n_layers"])
        roles = list(dict.fromkeys(t.role for t in self.targets if t.layer >= 0))
        self.log_keys = live.summary_keys(self.log_metrics, roles, ("early", "middle", "late")) if self.log_metrics else []
        if self.log_keys and not live.put_first(self):
            warnings.warn("LayerGradCallback: the Trainer's callback list was not found; the live summaries reach only the "
                          "callbacks after this one (report_to's reporters come first)", stacklevel=2)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step, self._epoch = int(state.global_step), float(state.epoch or 0.0)
        self._on = self._step % self.every_n_steps == 0
        if self._on and self._probe is not None:
            self._record_probe()

    def on_substep_end(self, args, state, control, **kwargs):
        self._close_micro()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._close_micro()

    def on_step_end(self, args, state, control, **kwargs):
        self._close_micro()
        ex_rows, mod_rows = self._rows
        if ex_rows:
            self.store.write_part(ex_rows, mod_rows)
        if self._on and self.log_keys:  # every rank: the sums are reduced over the ranks
            totals = live.all_ranks(live.sums_and_counts(self.log_keys, ex_rows, mod_rows, self.thirds))
            self._pending = live.summaries(self.log_keys, totals)
            control.should_log = True  # logged at this step, beside the trainer's loss
        self._rows = ([], [])
        self._on = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending and logs is not None:
            logs.update(self._pending)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self._pending)
            self._pending = {}

    def on_train_end(self, args, state, control, **kwargs):
        self._close_micro()
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.rank == 0 or self.reductions:
            note = {"reductions": self.reductions, "trainer_multipliers": sorted({float(f"{m:.6g}") for m in self.multipliers}),
                    "explained": "the backward's gradient at a label position's logits is alpha * (softmax - onehot); "
                                 "alpha * N is the trainer's multiplier of the model's loss (1 / accumulation steps for a "
                                 "per-micro-batch mean, the world size under average_tokens_across_devices, the fp16 loss scale)"}
            name = TRAINING_NOTE if self.rank == 0 else f"training-r{self.rank}.json"
            (self.out / name).write_text(json.dumps(note, indent=2), encoding="utf-8")

    # -- hooks on the whole model: one micro-batch -----------------------------------------
    def _pre(self, module, args, kwargs):
        if not (self._on and module.training and torch.is_grad_enabled()):
            return None
        self._close_micro()
        labels = kwargs.get("labels")
        if labels is None:
            raise UnsupportedTraining(
                "LayerGradCallback needs the labels among the model's inputs to find each example's response tokens; "
                "a compute_loss_func or label smoothing takes them out of the batch"
            )
        ids = kwargs.get("input_ids", args[0] if args else None)
        _refuse_packed(kwargs)
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        n_items = kwargs.get("num_items_in_batch")
        self._micro = {"ids": ids.detach().cpu(), "mask": mask.detach(), "labels": labels.detach(),
                       "n_items": None if n_items is None else float(n_items)}
        self._capture = Capture(self.targets, self.sink, self.embeddings).__enter__()
        return None

    def _post(self, module, args, kwargs, output):
        if self._capture is None or self._micro is None or "loss" in self._micro:
            return None
        self._capture.seal()  # layers recomputed in the backward (checkpointing) are not new calls
        m = self._micro
        fused = _get(output, "log_probs")
        if fused is not None:  # TRL's fused LM head: per-token log-probabilities, no logits
            if any(t.role == "lm_head" for t in self.targets):
                raise UnsupportedTraining("TRL's fused LM head never calls lm_head as a module, so its inputs and output "
                                          "gradients cannot be captured: leave lm_head out of modules=")
            m["log_probs"] = fused.detach()
            m["loss"] = rescale.own_losses_from_logprobs(fused, m["labels"])  # (n,) float64
            for name in ("entropy", "log_sum_sq_probs", "mean_logits"):  # metrics only; a loss on them is not a CE
                other = _get(output, name)
                if other is not None and other.requires_grad:
                    other.register_hook(_no_gradient(name))
            watched = fused
        else:
            logits = output["logits"] if isinstance(output, dict) or hasattr(output, "keys") else output[1]
            m["logits"] = logits.detach()
            m["loss"] = rescale.own_losses(logits, m["labels"])  # (n,) float64
            watched = logits
        self.sink.begin(m["mask"], self._capture.consumers(), self.by_layer_role)
        if watched.requires_grad:
            watched.register_hook(self._on_logits_grad)
        return None

    def _on_logits_grad(self, g):
        m = self._micro
        if "log_probs" in m:
            fit, dtype = rescale.fit_alpha_logprobs(g, m["labels"]), m["log_probs"].dtype
        else:
            fit, dtype = rescale.fit_alpha(g, m["logits"], m["labels"]), m["logits"].dtype
        if fit is None:
            self.sink.scales = torch.zeros(m["labels"].shape[0], dtype=torch.float64)
            return None
        rescale.check_fit(fit, dtype)
        count = int(rescale.label_counts(m["labels"]).sum())
        kind = "sum/num_items_in_batch" if m["n_items"] is not None else "mean over the micro-batch's label tokens"
        self.reductions[kind] = self.reductions.get(kind, 0) + 1
        self.multipliers.append(fit.alpha * (m["n_items"] if m["n_items"] is not None else count))
        self.sink.scales = rescale.example_scales(fit, m["labels"].cpu())
        return None

    def _close_micro(self) -> None:
        cap, m = self._capture, self._micro
        self._capture, self._micro = None, None
        if cap is None:
            return
        try:
            if m is None or "loss" not in m or self.sink.scales is None:
                warnings.warn("LayerGradCallback: a training forward pass had no backward through its logits; "
                              "its examples are not recorded", stacklevel=2)
                return
            cap.finish()
            self._add_rows(m, self.sink.finish())
        finally:
            cap.__exit__(None, None, None)

    # -- rows --------------------------------------------------------------------------------
    def _add_rows(self, m: dict, measured) -> None:
        ids, mask, labels = m["ids"], m["mask"].cpu().bool(), m["labels"].cpu()
        counts = rescale.label_counts(labels)
        seen: dict[str, int] = {}
        ex_rows, mod_rows = self._rows
        for b in range(ids.shape[0]):
            if int(counts[b]) == 0:
                continue  # nothing to learn from (padding, or a fully masked example)
            toks, labs = ids[b][mask[b]].tolist(), labels[b][mask[b]].tolist()
            cid = hashlib.sha256(json.dumps([toks, labs]).encode()).hexdigest()[:16]
            k = seen[cid] = seen.get(cid, -1) + 1
            ex_id = f"{cid}@{self._step}" + (f"-{k}" if k else "")
            P = next((j for j, v in enumerate(labs) if v != rescale.IGNORE), len(labs))
            L = float(m["loss"][b])
            rows, bad = module_rows_of(ex_id, b, measured.modules, self.targets)
            blamed = measured.faults.get(b) or bad
            status, reason = ("failed", f"non-finite gradient in {', '.join(blamed[:3])}") if blamed else ("ok", None)
            if not torch.isfinite(torch.tensor(L)):
                status, reason = "failed", "non-finite loss"
            ex_rows.append(example_row(
                id=ex_id, group=self.group, source="training", index=None, order=self._order, status=status,
                reason=reason, instruction=self._decode(toks[:P]), output=self._decode(toks[P:]), loss=L,
                n_tokens=len(toks), n_prompt_tokens=P, n_response_tokens=int(counts[b]), truncated=None,
                step=self._step, epoch=self._epoch, example_id=cid,
            ))
            self._order += 1
            if status == "ok":
                mod_rows.extend(rows)

    def _decode(self, toks: list[int]) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode(toks)

    # -- the probe set: `layergrad run`'s own batch step, at the recorded steps' weights -----
    def _load_probe(self):
        from layergrad.inputs.data import load_examples
        from layergrad.inputs.prompting import encode, resolve_mode

        if self.tokenizer is None:
            raise ConfigError("LayerGradCallback(probe=...) needs a tokenizer: pass processing_class to the trainer "
                              "or tokenizer= to the callback", source="LayerGradCallback")
        examples, _ = load_examples(self.probe, group=self.probe_group)
        mode = resolve_mode(self.prompt_mode, self.tokenizer)
        encoded = [encode(ex, self.tokenizer, mode, self.max_length) for ex in examples]
        keep = [k for k, e in enumerate(encoded) if e.skip_reason is None]
        return [examples[k] for k in keep], [encoded[k] for k in keep]

    def _record_probe(self) -> None:
        from layergrad.run.plan import pad_id_of
        from layergrad.run.step import BatchRunner, compute_batch

        model, (examples, encoded) = self.model, self._probe
        was_training = model.training
        runner = BatchRunner(model, self.targets, FiniteGuard(self._measurer()), next(model.parameters()).device,
                             pad_id_of(self.tokenizer))
        ex_rows, mod_rows = [], []
        model.eval()  # no dropout: the probe's statistics are those of `layergrad run` at these weights
        try:
            with runner.hooks():
                for a in range(0, len(examples), self.probe_batch_size):
                    part = list(range(a, min(a + self.probe_batch_size, len(examples))))
                    e, mo, *_ = compute_batch(runner, [examples[k] for k in part], [encoded[k] for k in part], part)
                    ex_rows += e
                    mod_rows += mo
        finally:
            model.train(was_training)
        for r in ex_rows:
            r.update(example_id=r["id"], step=self._step, epoch=self._epoch, order=self._order)
            self._order += 1
        for r in ex_rows + mod_rows:
            r["id"] = f"{r['id']}@{self._step}"
        self.store.write_part(ex_rows, mod_rows)

    # -- setup -------------------------------------------------------------------------------
    def _measurer(self) -> Measurer:
        return Measurer(stats_dtype=getattr(torch, self.stats_dtype), spectrum_k=self.spectrum_k, method=self.method)

    def _manifest(self, model, args) -> dict:
        import transformers

        cfg = model.config
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        name = str(getattr(cfg, "_name_or_path", "") or type(model).__name__)
        return {
            "schema_version": SCHEMA_VERSION,
            "layergrad_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": name,
            "model_path": name,
            "model_fingerprint": "training:" + hashlib.sha256(cfg.to_json_string().encode()).hexdigest()[:16],
            "model_type": getattr(cfg, "model_type", None),
            "n_layers": int(getattr(text, "num_hidden_layers", 0) or (max(t.layer for t in self.targets) + 1)),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "stats_dtype": self.stats_dtype,
            "prompt_mode": "training",
            "max_length": self.max_length,
            "modules": self.modules,
            "module_names": [t.name for t in self.targets],
            "data": [str(p) for p in self.probe],
            "data_fingerprint": None,
            "group": self.group,
            "spectrum_k": self.spectrum_k,
            "elementwise": False,
            "cosine": False,
            "ifd": False,
            "ifd_rule": None,
            "loss_rule": LOSS_RULE,
            "recorded": {"by": "LayerGradCallback", "every_n_steps": self.every_n_steps,
                         "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
                         "world_size": int(getattr(args, "world_size", 1) or 1),
                         "gradient_checkpointing": bool(getattr(args, "gradient_checkpointing", False)),
                         "bf16": bool(getattr(args, "bf16", False)), "fp16": bool(getattr(args, "fp16", False))},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }


def _refuse_unsupported(args) -> None:
    options = [o for o in ("padding_free", "packing") if getattr(args, o, False)]
    if options:  # TRL's SFTConfig; "wrapped" packing leaves no position ids to find the examples by
        raise UnsupportedTraining(
            f"LayerGradCallback measures one example per batch row, but {' and '.join(f'{o}=True' for o in options)} puts "
            "several examples in one row. Turn it off: SFTConfig(padding_free=False, packing=False), or measure "
            "checkpoints with `layergrad run`"
        )
    fsdp = getattr(args, "fsdp", None)
    if fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        raise UnsupportedTraining(
            "LayerGradCallback does not support FSDP: a sharded module's inputs and output gradients are not whole "
            "on any one rank. Train with DDP (torchrun without --fsdp), or save checkpoints and measure them with "
            "`layergrad run` (see `layergrad report --checkpoints`)"
        )


def _get(output, name: str):
    """``output[name]`` of a dict-like model output, else ``None``."""
    return output.get(name) if hasattr(output, "keys") and hasattr(output, "get") else None


def _no_gradient(name: str):
    def hook(g):
        if bool((g != 0).any()):
            raise rescale.RescaleError(
                f"the trainer's loss has a gradient at the fused head's {name!r}: it is not a token cross-entropy, so it "
                "cannot be rescaled to per-example mean losses; measure checkpoints with `layergrad run` instead")
        return None

    return hook


def _refuse_packed(kwargs) -> None:
    """Refuse rows that hold several examples (padding-free or packed batches): position ids restart in a row."""
    pos = kwargs.get("position_ids")
    packed = kwargs.get("cu_seq_lens_q") is not None
    if pos is not None and pos.dim() == 2 and pos.shape[1] > 1:
        restart = pos[:, 1:] <= pos[:, :-1]  # (n, t - 1)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:  # padding may repeat a position; only real neighbours count
            restart &= mask[:, 1:].bool() & mask[:, :-1].bool()
        packed = packed or bool(restart.any())
    if packed:
        raise UnsupportedTraining(
            "LayerGradCallback measures one example per batch row, but this batch is padding-free or packed (position_ids "
            "restart inside a row: several examples share it). Turn it off: SFTConfig(padding_free=False, packing=False) "
            "(or a collator without padding_free), or measure checkpoints with `layergrad run`"
        )
