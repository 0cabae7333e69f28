"""The run loop: plan batches, forward, activation-only backward, statistics, parts on disk.

A run is resumable: examples whose id is stored in a committed part are skipped. Batches
are planned once for all examples (:mod:`batching`), so a resumed or sharded run computes
every batch exactly as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from layergrad import __version__
from layergrad.run import distributed
from layergrad.run import faults
from layergrad.spectra import svd as spectral
from layergrad import vocab
from layergrad.run.plan import Batch, pad, pad_id_of, plan_batches, shard_batches
from layergrad.measure.capture import Capture, activation_only_backward
from layergrad.config import RunConfig, parse_shard
from layergrad.inputs.data import DataError, Example, Fields, load_examples
from layergrad.run.ifd import NoPromptRule, score_batch, undefined
from layergrad.run.loss import loss_positions, per_example_loss
from layergrad.measure.measurer import Measurer
from layergrad.inputs.targets import Target, find_targets
from layergrad.inputs.prompting import Encoded, encode
from layergrad.store import RunStore
from layergrad.store.schema import SCHEMA_VERSION

LOSS_RULE = "mean-ce-response-tokens/v1"


@dataclass
class RunSummary:
    out: Path
    total: int  # examples in the data (after --limit)
    computed: int  # computed by this call
    skipped_done: int  # already stored before this call
    status_counts: dict  # of the whole store; empty on ranks other than 0 under torchrun
    seconds: float
    rank: int = 0  # under torchrun: this process's rank (only rank 0 reports the whole store)
    world_size: int = 1


# ---------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------


def data_fingerprint(cfg: RunConfig) -> str:
    h = hashlib.sha256()
    for p in cfg.data:
        h.update(str(Path(p).name).encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    h.update(json.dumps([cfg.group, cfg.fields, cfg.limit, cfg.record_slice], sort_keys=True).encode())
    return h.hexdigest()[:16]


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_data(cfg: RunConfig) -> tuple[list[Example], list]:
    fields = Fields(**cfg.fields) if cfg.fields else Fields()
    examples, problems = load_examples(cfg.data, group=cfg.group, fields=fields, skip_invalid=cfg.skip_invalid)
    if cfg.record_slice is not None:
        examples, problems = _slice_records(examples, problems, *cfg.record_slice)
    if cfg.limit is not None:
        per_file: dict[str, int] = {}
        kept = []
        for ex in examples:
            c = per_file.get(ex.source, 0)
            if c < cfg.limit:
                kept.append(ex)
            per_file[ex.source] = c + 1
        examples = kept
        problems = [p for p in problems if p.index is None or p.index < cfg.limit]
    return examples, problems


def _slice_records(examples, problems, start: float, end: float):
    """The paper's ``--start_idx_ratio`` / ``--end_idx_ratio``: a value above 1 is an index, else a ratio."""
    sizes: dict[str, int] = {}
    for ex in examples:
        sizes[ex.source] = max(sizes.get(ex.source, 0), ex.index + 1)
    for p in problems:
        if p.index is not None:
            sizes[p.source] = max(sizes.get(p.source, 0), p.index + 1)

    def bounds(src):
        n = sizes[src]
        lo = int(start) if start > 1 else int(n * start)
        e = 1 if end == -1 else end
        hi = int(e) if e > 1 else int(n * e)
        return lo, hi

    keep = lambda src, i: bounds(src)[0] <= i < bounds(src)[1]  # noqa: E731
    return [ex for ex in examples if keep(ex.source, ex.index)], [p for p in problems if p.index is None or keep(p.source, p.index)]


def resolve_prompt_mode(cfg: RunConfig, tokenizer) -> str:
    if cfg.prompt_mode != "auto":
        return cfg.prompt_mode
    return "chat" if getattr(tokenizer, "chat_template", None) else "base"


def build_manifest(cfg: RunConfig, loaded, mode: str, targets: list[Target]) -> dict:
    import transformers

    model_cfg = loaded.model.config
    text_cfg = model_cfg.get_text_config() if hasattr(model_cfg, "get_text_config") else model_cfg
    return {
        "schema_version": SCHEMA_VERSION,
        "layergrad_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": cfg.model,
        "model_path": loaded.path,
        "model_fingerprint": loaded.fingerprint,
        "model_type": getattr(model_cfg, "model_type", None),
        "n_layers": int(getattr(text_cfg, "num_hidden_layers", 0) or (max(t.layer for t in targets) + 1)),
        "dtype": loaded.dtype,
        "stats_dtype": cfg.stats_dtype,
        "prompt_mode": ("reference-" if cfg.reference else "") + mode,
        "max_length": cfg.max_length,
        "modules": cfg.modules,
        "module_names": [t.name for t in targets],
        "data": [str(p) for p in cfg.data],
        "data_fingerprint": data_fingerprint(cfg),
        "group": cfg.group,
        # with data/group, what selects the examples (so `layergrad merge` can list missing ones)
        "fields": cfg.fields,
        "limit": cfg.limit,
        "record_slice": cfg.record_slice,
        "skip_invalid": cfg.skip_invalid,
        "spectrum_k": cfg.spectrum_k,
        "elementwise": cfg.elementwise,
        "cosine": cfg.cosine,
        "ifd": cfg.ifd or False,  # the IFD definition's name (false: off, as runs stored before names were)
        "ifd_rule": NoPromptRule.for_tokenizer(loaded.tokenizer, cfg.ifd).describe() if cfg.ifd else None,
        "loss_rule": LOSS_RULE,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


# ---------------------------------------------------------------------------------------
# One batch
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def gather_logits_at(model, index: dict):
    """Compute the output layer only at the positions that are loss terms.

    A forward pre-hook on the output embedding replaces its input ``(n, t, h)`` by the rows
    ``index["rows"], index["pos"]`` ``(1, N, h)``. The vocabulary projection is a large part
    of a small model's work; the other positions' logits never reach the loss.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield False
        return

    def pre(module, args):
        h = args[0]
        if h.dim() == 3 and "rows" in index:
            rows = index["rows"].to(h.device)
            pos = index["pos"].to(h.device)
            return (h[rows, pos].unsqueeze(0),) + tuple(args[1:])
        return None

    handle = head.register_forward_pre_hook(pre)
    try:
        yield True
    finally:
        handle.remove()


class BatchRunner:
    """Computes the rows of one batch; holds the hooks for the whole run."""

    def __init__(self, model, targets: list[Target], measurer: Measurer, device, pad_id: int, ifd=None):
        self.model = model
        self.ifd = ifd  # ifd.NoPromptRule under --ifd: one extra no-grad forward per batch
        self.ifd_rows: list[dict] | None = None  # IFD fields of the last batch's examples
        self.targets = targets
        self.measurer = measurer
        self.device = device
        self.pad_id = pad_id
        self.by_layer_role = {(t.layer, t.role): t for t in targets if t.layer >= 0}
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        # the output head, whatever its name: measured, it needs its input at every position
        self.gather = not any(t.module is head or t.role == "lm_head" for t in targets)
        paths = {n: m for n, m in model.named_modules()}
        self.embeddings = {t.tied: paths[t.tied] for t in targets if t.tied is not None}
        self._index: dict = {}

    @contextlib.contextmanager
    def hooks(self):
        with contextlib.ExitStack() as stack:
            stack.enter_context(activation_only_backward(self.model))
            self.capture = stack.enter_context(Capture(self.targets, self.measurer, self.embeddings))
            if self.gather:
                stack.enter_context(gather_logits_at(self.model, self._index))
            yield self

    def run(self, encoded: list[Encoded]) -> tuple[torch.Tensor, dict]:
        """Forward + backward for a batch; returns per-example loss ``(n,)`` and the measurer's results."""
        lengths = [e.n_tokens for e in encoded]
        n_prompt = [e.n_prompt for e in encoded]
        ids, mask = pad([e.input_ids for e in encoded], self.pad_id)
        rows, pred, tgt = loss_positions(lengths, n_prompt)
        targets = ids[rows, tgt].to(self.device)
        self._index.clear()
        if self.gather:
            self._index.update(rows=rows, pos=pred)
        try:
            with torch.enable_grad():
                out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False)
                logits = out.logits
                if logits.shape[:2] == ids.shape:  # the model bypassed the gather: select here
                    logits = logits[rows.to(logits.device), pred.to(logits.device)]
                else:
                    logits = logits.reshape(-1, logits.shape[-1])
                loss = per_example_loss(logits, targets.to(logits.device), rows.to(logits.device), len(encoded))
                finite = torch.isfinite(loss)
                self.capture.seal()  # a recomputation in the backward (checkpointing) is not a new call
                self.measurer.begin(mask, self.capture.consumers(), self.by_layer_role)
                objective = loss[finite].sum()
                if objective.requires_grad:
                    objective.backward()
                self.capture.finish()
            if self.ifd is not None:
                self.ifd_rows = score_batch(self.ifd, self.model, encoded, logits, targets.to(logits.device), rows, tgt, loss,
                                            pad_id=self.pad_id, device=self.device, index=self._index if self.gather else None)
            return loss.detach().cpu().double(), self.measurer.results
        finally:
            self.capture.reset()
            self._index.clear()


# ---------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------


def example_row(ex: Example, order: int, enc: Encoded | None, status: str, reason: str | None, loss: float | None) -> dict:
    return {
        "id": ex.id,
        "group": ex.group,
        "source": ex.source,
        "index": ex.index,
        "order": order,
        "status": status,
        "reason": reason,
        "instruction": ex.prompt if ex.messages is None else json.dumps(list(ex.messages), ensure_ascii=False),
        "output": ex.response,
        "loss": loss,
        "n_tokens": enc.n_tokens if enc else None,
        "n_prompt_tokens": enc.n_prompt if enc else None,
        "n_response_tokens": enc.n_response if enc else None,
        "response_chars": len(ex.response),
        "truncated": enc.truncated if enc else None,
    }


def module_rows(ex_id: str, b: int, results: dict, targets: list[Target]) -> tuple[list[dict], str | None]:
    """Rows of example ``b`` of a batch; a reason if any statistic is not finite."""
    rows = []
    bad = []
    for t in targets:
        r = results[t.name]
        st = {k: float(v[b]) for k, v in r.stats.items()}
        if not math.isfinite(st["nuclear"]) or not math.isfinite(st["frobenius"]):
            bad.append(t.name)
        row = {
            "id": ex_id,
            "module": t.name,
            "param": t.param,
            "layer": t.layer,
            "role": t.role,
            "out_features": t.out_features,
            "in_features": t.in_features,
            "rank": int(r.rank[b]),
            **st,
            "spectrum": r.spectrum[b, : int(r.rank[b])].tolist(),
            "m_mean": None,
            "m_max": None,
            "m_min": None,
            "method": r.method,
            "tied_with": t.tied,
            "reason": spectral.undefined_reason(st["nuclear"]),
        }
        if r.elementwise is not None:
            row["m_mean"], row["m_max"], row["m_min"] = (float(v[b]) for v in r.elementwise)
        rows.append(row)
    return rows, (faults.nonfinite_gradient(bad) if bad else None)


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def run(cfg: RunConfig, *, loaded=None, log=print) -> RunSummary:
    """Compute and store the statistics of every example of ``cfg.data``; resume if possible.

    Under torchrun (``RANK``/``WORLD_SIZE`` set) every rank calls this with the same ``cfg``
    and computes its own shard of the global batch plan (see :mod:`distributed`).
    """
    cfg.validate()  # every bad option at once, before any model loads
    world = distributed.detect()
    device = resolve_device(cfg.device)
    if world is not None:
        device = distributed.local_device(world, device, cfg.device_map)
    distributed.ensure_process_group(world, device)  # once per process, kept for later runs
    return _run(cfg, loaded, world, device)


def _run(cfg: RunConfig, loaded, world: distributed.World | None, device: str) -> RunSummary:
    from tqdm.auto import tqdm

    from layergrad.inputs.models import load_model

    t0 = time.time()
    examples, problems = load_data(cfg)
    if loaded is None:
        loaded = load_model(cfg.model, dtype=cfg.dtype, device=device, device_map=cfg.device_map, trust_remote_code=cfg.trust_remote_code, progress=cfg.progress)
    model, tok = loaded.model, loaded.tokenizer
    model.eval()
    targets = find_targets(model, "reference" if cfg.reference and cfg.modules == "reference" else cfg.modules)
    mode = resolve_prompt_mode(cfg, tok)
    encoded = [encode(ex, tok, mode, cfg.max_length, reference=cfg.reference) for ex in examples]
    if not cfg.skip_invalid:  # nothing to score is bad input: refused before anything is written
        unscorable = faults.unscorable_problems(examples, encoded, (cfg.fields or {}).get("output", "output"))
        if unscorable:
            raise DataError(unscorable, hint=faults.unscorable_hint(encoded))

    shard = distributed.shard_of(world, parse_shard(cfg.shard))
    writer = world.writer if world else (f"s{shard[0]}of{shard[1]}" if shard else "r0")
    store = RunStore(cfg.out, writer=writer)
    distributed.open_store(store, build_manifest(cfg, loaded, mode, targets), world)  # rank 0 first
    store.remove_orphans()
    for note in store.quarantine_unreadable():  # whole parts only: their examples are computed again
        tqdm.write(note, file=sys.stderr)
    done = store.done_ids()

    computable = [k for k, e in enumerate(encoded) if e.skip_reason is None]
    batches = plan_batches([encoded[k].n_tokens for k in computable], cfg.batch_size, cfg.max_batch_tokens)
    batches = [Batch(b.index, tuple(computable[j] for j in b.items), b.max_len) for b in batches]
    if shard:
        batches = shard_batches(batches, *shard)
    first_writer = shard is None or shard[0] == 0

    # examples that need no compute: skipped (nothing to score) and invalid records
    if first_writer:
        rows = [
            example_row(ex, k, encoded[k], "skipped", encoded[k].skip_reason, None)
            for k, ex in enumerate(examples)
            if encoded[k].skip_reason is not None and ex.id not in done
        ]
        rows += invalid_rows(problems, len(examples))
        rows = [r for r in rows if r["id"] not in done]
        if cfg.ifd:
            for r in rows:
                r.update(undefined(f"not computed ({r['status']}): {r['reason']}"))
        if rows:
            store.write_part(rows, [])

    todo = [b for b in batches if not all(examples[k].id in done for k in b.items)]
    n_todo = sum(len(b.items) for b in todo)
    stats_dtype = {k: getattr(torch, v) for k, v in vocab.STATS_DTYPES.items()}[cfg.stats_dtype]
    measurer = faults.FiniteGuard(Measurer(stats_dtype=stats_dtype, spectrum_k=cfg.spectrum_k, elementwise=cfg.elementwise, cosine=cfg.cosine, method=cfg.method))
    pad_id = pad_id_of(tok)
    model_device = next(model.parameters()).device
    ifd_rule = NoPromptRule.for_tokenizer(tok, cfg.ifd) if cfg.ifd else None
    runner = BatchRunner(model, targets, measurer, model_device, pad_id, ifd=ifd_rule)

    # out of memory: split the batch and retry, down to one example (stored as failed if it still fails)
    backoff = faults.Backoff(log=lambda msg: tqdm.write(msg, file=sys.stderr))
    compute = lambda part: compute_batch(runner, [examples[k] for k in part], [encoded[k] for k in part], part)  # noqa: E731
    fail = lambda k, reason: ([failed_row(examples[k], k, encoded[k], reason, cfg.ifd)], [], [])  # noqa: E731
    cost = lambda part: len(part) * max(encoded[k].n_tokens for k in part)  # noqa: E731
    computed = 0
    main_rank = world is None or world.is_main
    bar = tqdm(total=n_todo, unit="ex", desc="layergrad", disable=not cfg.progress or not main_rank, dynamic_ncols=True)
    try:
        with runner.hooks():
            for b in todo:
                items = [k for k in b.items if examples[k].id not in done]
                pieces = backoff.run(items, compute, fail, cost)
                ex_rows, mod_rows, cos_rows = ([r for p in pieces for r in p[i]] for i in range(3))
                store.write_part(ex_rows, mod_rows, cos_rows)
                computed += len(items)
                bar.update(len(items))
    finally:
        bar.close()
    if world is not None:
        distributed.barrier()  # every rank's parts are committed past this point
    counts: dict[str, int] = {}
    if main_rank:
        for r in store.read_tables()[0].column("status").to_pylist():
            counts[r] = counts.get(r, 0) + 1
    rank, size = (world.rank, world.size) if world else (0, 1)
    return RunSummary(Path(cfg.out), len(examples), computed, len(done), counts, time.time() - t0, rank, size)


def invalid_rows(problems: list, first_order: int) -> list[dict]:
    """One row per invalid record (``--skip-invalid``), every problem of it in ``reason``."""
    by_record: dict[tuple, list] = {}
    for p in problems:
        if p.index is not None:
            by_record.setdefault((p.source, p.index), []).append(p)
    return [invalid_row(src, idx, ps, first_order + j) for j, ((src, idx), ps) in enumerate(by_record.items())]


def invalid_row(source: str, index: int, problems: list, order: int) -> dict:
    return {
        "id": f"invalid:{source}:{index}",
        "group": None,
        "source": source,
        "index": index,
        "order": order,
        "status": "invalid",
        "reason": "; ".join(str(p) for p in problems),
        "instruction": None,
        "output": None,
        "loss": None,
        "n_tokens": None,
        "n_prompt_tokens": None,
        "n_response_tokens": None,
        "response_chars": None,
        "truncated": None,
    }


def failed_row(ex: Example, order: int, enc: Encoded, reason: str, ifd: bool) -> dict:
    """The row of an example that failed alone (out of memory, a factorisation that failed)."""
    row = example_row(ex, order, enc, "failed", reason, None)
    if ifd:
        row.update(undefined(f"not computed (failed): {reason}"))
    return row


def compute_batch(runner: BatchRunner, exs: list[Example], encs: list[Encoded], orders: list[int]):
    loss, results = runner.run(encs)
    ex_rows, mod_rows, cos_rows = [], [], []
    for b, (ex, enc, order) in enumerate(zip(exs, encs, orders)):
        L = float(loss[b])
        if not math.isfinite(L):
            ex_rows.append(example_row(ex, order, enc, "failed", faults.nonfinite_loss(L), None))
            continue
        rows, reason = module_rows(ex.id, b, results, runner.targets)
        blamed = getattr(runner.measurer, "nonfinite", {}).get(b)  # faults.FiniteGuard: zeroed non-finite X or D
        if blamed:
            reason = faults.nonfinite_gradient(blamed)
        if reason:
            ex_rows.append(example_row(ex, order, enc, "failed", reason, L))
            continue
        ex_rows.append(example_row(ex, order, enc, "ok", None, L))
        mod_rows.extend(rows)
        by_name = {t.name: t for t in runner.targets}
        for kind, a, bname, cos in runner.measurer.cosines:
            ta = by_name[a]
            cos_rows.append({"id": ex.id, "kind": kind, "role": ta.role, "layer": ta.layer, "module_a": a, "module_b": bname, "cosine": float(cos[b])})
    if runner.ifd is not None:  # one example row per batch item, in batch order
        for row, fields in zip(ex_rows, runner.ifd_rows):
            row.update(fields)
    return ex_rows, mod_rows, cos_rows
