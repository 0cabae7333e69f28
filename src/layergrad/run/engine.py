"""The run loop: plan, resume, step, write.

A run is resumable: examples whose id is stored in a committed part are skipped. Batches are
planned once for all examples (:mod:`.plan`), so a resumed or sharded run computes every batch
exactly as an uninterrupted one. :func:`run` reads top-down; each step lives in the module named
after it: the data (:mod:`layergrad.inputs.dataset`), the model and its targets
(:mod:`layergrad.inputs`), the manifest and rows (:mod:`layergrad.store`), one batch
(:mod:`.step`), faults and back-off (:mod:`.faults`).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from layergrad import vocab
from layergrad.config import RunConfig, parse_shard
from layergrad.inputs.data import DataError, describe_data
from layergrad.inputs.dataset import data_fingerprint, load_data
from layergrad.inputs.models import refuse_quantized
from layergrad.inputs.prompting import encode, resolve_mode
from layergrad.inputs.targets import find_targets
from layergrad.measure.guard import FiniteGuard
from layergrad.measure.measurer import Measurer
from layergrad.run import distributed, faults, memory, truncate
from layergrad.run.ifd import NoPromptRule, undefined
from layergrad.run.loss import LOSS_RULE
from layergrad.run.progress import BAR_FORMAT, BatchProgress
from layergrad.run.plan import Batch, pad_id_of, plan_batches, shard_batches
from layergrad.run.step import BatchRunner, ShareLayout, compute_batch, failed_row
from layergrad.store import RunStore
from layergrad.store.manifest import build_manifest
from layergrad.store.rows import depth_thirds, example_of, invalid_rows, scored_text
from layergrad.store.run import refuse_changed_records


@dataclass
class RunSummary:
    out: Path
    total: int  # examples in the data (after --limit)
    computed: int  # computed by this call
    skipped_done: int  # already stored before this call
    status_counts: dict  # of the whole store; empty on ranks other than 0 under torchrun
    seconds: float
    notes: list = field(default_factory=list)  # lines for the user (what --truncate-* did)
    failures: str = ""  # the store's failed examples by why ("4 out of memory, ..."); empty when none
    rank: int = 0  # under torchrun: this process's rank (only rank 0 reports the whole store)
    world_size: int = 1


def resolve_device(name: str) -> str:
    """``auto``: CUDA when there is a GPU, else the CPU; any other name as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run(cfg: RunConfig, *, loaded=None, log=print, wait_for_lock: bool = False) -> RunSummary:
    """Compute and store the statistics of every example of ``cfg.data``; resume if possible.

    Under torchrun (``RANK``/``WORLD_SIZE`` set) every rank calls this with the same ``cfg``
    and computes its own shard of the global batch plan (see :mod:`.distributed`).
    ``wait_for_lock``: when another process writes ``cfg.out`` under this writer's name, wait for
    it to finish (``layergrad experiment``) instead of refusing (:class:`~layergrad.store.lock.RunLocked`).
    """
    cfg.validate()  # every bad option at once, before any model loads
    world = distributed.detect()
    device = resolve_device(cfg.device)
    if world is not None:
        device = distributed.local_device(world, device, cfg.device_map)
    distributed.ensure_process_group(world, device)  # once per process, kept for later runs
    return _run(cfg, loaded, world, device, wait_for_lock)


def _run(cfg: RunConfig, loaded, world: distributed.World | None, device: str, wait_for_lock: bool = False) -> RunSummary:
    from tqdm.auto import tqdm

    t0 = time.time()
    note = lambda msg: tqdm.write(msg, file=sys.stderr)  # noqa: E731
    # plan: the examples, the model, what is measured, the batches
    for line in describe_data(cfg.data):  # a data folder: what it reads and skips, as `validate` says it
        note(f"layergrad: {line}")
    examples, problems = load_data(cfg)
    _refuse_turnless(cfg, examples)
    # --truncate-to: a missing or unusable partner run is refused before the model loads
    partners = truncate.load_partners(cfg.truncate_to, examples) if cfg.truncate_to is not None else None
    if not cfg.add_data:  # before the model loads (checked again, under the lock, when the store opens)
        RunStore(cfg.out).refuse_other_data(cfg.data)
    loaded = loaded or _load_model(cfg, device)
    model, tok = loaded.model, loaded.tokenizer
    if partners is not None and partners.manifest.get("model_fingerprint") not in (None, loaded.fingerprint):
        note(f"layergrad: --truncate-to {cfg.truncate_to} was computed with another model "
             f"({partners.manifest.get('model')}); its lengths are counted in that model's tokens")
    refuse_quantized(model, what=f"model {cfg.model!r}")
    model.eval()
    targets = find_targets(model, cfg.modules)
    mode = resolve_mode(cfg.prompt_mode, tok)
    encoded = [encode(ex, tok, mode, cfg.max_length, reference=cfg.reference, system=cfg.system_prompt, turns=cfg.turns)
               for ex in examples]
    _refuse_unscorable(cfg, examples, encoded)
    encoded, truncation, cut_notes = truncate.apply(cfg, examples, encoded, partners)  # --truncate-*: cut ids, or skip (reason)
    shard = distributed.shard_of(world, parse_shard(cfg.shard))
    batches = _plan(cfg, encoded, shard)

    # resume: open (or create) the store, keep what is committed
    store = RunStore(cfg.out, writer=world.writer if world else (f"s{shard[0]}of{shard[1]}" if shard else "r0"))
    ifd_rule = NoPromptRule.for_tokenizer(tok, cfg.ifd) if cfg.ifd else None
    manifest = build_manifest(cfg, loaded, mode, targets, data_fingerprint=data_fingerprint(cfg), loss_rule=LOSS_RULE,
                              ifd_rule=ifd_rule.describe() if ifd_rule else None, truncation=truncation)
    distributed.open_store(store, manifest, world, wait=wait_for_lock, log=note, add_data=cfg.add_data)  # rank 0 first; takes the writer's lock
    try:
        for msg in store.notes:  # what the run grew by (more data files, a larger --limit)
            note(f"layergrad: {msg}")
        store.remove_orphans()
        for msg in store.quarantine_unreadable():  # whole parts only: their examples are computed again
            note(msg)
        stored = store.stored_texts()
        refuse_changed_records(stored, examples, scored_text)  # an id names one example: its text must not change
        failed = store.failed_reasons()  # id -> reason of the examples stored as failed
        retry = faults.to_retry(failed, [ex.id for ex in examples], cfg.retry)
        _note_retries(failed, examples, retry, cfg.retry, note)
        done = set(stored) - set(retry)  # a retried example's new row replaces its failed one (RunStore.superseded)
        if shard is None or shard[0] == 0:  # examples that need no compute: skipped and invalid records
            _write_uncomputed(store, cfg, examples, encoded, problems, done)

        # step and write: one committed part per batch; out of memory splits a batch (down to one example)
        runner = _runner(cfg, model, targets, tok, ifd_rule, manifest["n_layers"])
        backoff = faults.Backoff(log=note)
        compute = lambda part: compute_batch(runner, [examples[k] for k in part], [encoded[k] for k in part], part)  # noqa: E731
        fail = lambda k, reason: ([failed_row(examples[k], k, encoded[k], reason, bool(cfg.ifd))], [], [], [])  # noqa: E731
        cost = lambda part: len(part) * max(encoded[k].n_tokens for k in part)  # noqa: E731
        todo = [[k for k in b.items if examples[k].id not in done] for b in batches]
        todo = [items for items in todo if items]
        fits = _memory_plan(cfg, runner, model, targets, encoded, note)
        main_rank = world is None or world.is_main
        computed = 0
        with tqdm(total=sum(map(len, todo)), unit="ex", desc="layergrad", disable=not cfg.progress or not main_rank,
                  dynamic_ncols=True, bar_format=BAR_FORMAT) as bar, runner.hooks():
            for items in todo:
                runner.measurer.within(bar, computed + len(items))  # the bar moves module by module inside the batch
                parts, too_big = fits(items)
                pieces = [fail(k, reason) for k, reason in too_big]  # never run: nothing is allocated for them
                for part in parts:
                    pieces += backoff.run(part, compute, fail, cost)
                store.write_part(*([r for p in pieces for r in p[i]] for i in range(4)))
                computed += len(items)
                runner.measurer.settle()
        if world is not None:
            distributed.barrier()  # every rank's parts are committed past this point
        counts = store.status_counts() if main_rank else {}
        failures = faults.count_by_label(store.failed_reasons().values()) if main_rank else ""
    finally:
        store.close()  # the writer's lock
    rank, size = (world.rank, world.size) if world else (0, 1)
    return RunSummary(Path(cfg.out), len(examples), computed, len(done), counts, time.time() - t0, cut_notes, failures, rank, size)


def _note_retries(failed: dict, examples, retry: dict, mode: str, note) -> None:
    """Say which stored failures this rerun computes again, and which it keeps (and how to retry them)."""
    if retry:
        note(f"layergrad: retrying {len(retry)} failed example{'s' if len(retry) != 1 else ''} "
             f"({faults.count_by_label(retry.values())})")
    kept = [failed[ex.id] for ex in examples if ex.id in failed and ex.id not in retry]
    if kept:
        how = "--no-retry" if mode == "none" else "--retry-failed retries them"
        note(f"layergrad: keeping {len(kept)} failed example{'s' if len(kept) != 1 else ''} as stored "
             f"({faults.count_by_label(kept)}; {how})")


def _memory_plan(cfg: RunConfig, runner: BatchRunner, model, targets, encoded, note):
    """``fits(items) -> (parts, too_big)``: a planned batch split in halves (as :class:`~.faults.Backoff`
    does) until each part's estimated peak (:func:`.memory.estimate_batch_bytes`) is within the budget
    (``--max-memory``; default a fraction of what is available now, plus the loaded weights), and the
    examples that exceed it alone, with their reason. The global plan (and sharding) is untouched: the
    split depends only on the batch and the budget. No budget (the available memory unknown): no split.
    """
    shape = memory.model_shape_of(model)
    budget = memory.budget_bytes(cfg.max_memory, runner.device, resident=shape.param_bytes)
    if budget is not None and budget < shape.param_bytes:
        note(f"layergrad: --max-memory {cfg.max_memory} ({memory.gib(budget)} GiB) is less than the model's weights "
             f"alone ({memory.gib(shape.param_bytes)} GiB): no example can fit, each is stored as failed")
    if budget is None:
        note("layergrad: the available memory is unknown here; batches are not planned under a memory budget "
             "(pass --max-memory to set one)")
        return lambda items: ([items], [])
    stats_itemsize = getattr(torch, vocab.STATS_DTYPES[cfg.stats_dtype]).itemsize
    batched = cfg.eig_batch == "on" or (cfg.eig_batch == "auto" and torch.device(runner.device).type == "cuda")
    threads = torch.get_num_threads()
    queue = Measurer.eig_queue_bytes if batched else 0  # the batched path's queue of side matrices
    explicit = cfg.max_memory is not None  # only a budget the user set refuses an example outright

    def estimate(part) -> int:
        n, t = len(part), max(encoded[k].n_tokens for k in part)
        n_loss = sum(max(1, encoded[k].n_response) for k in part)
        return memory.estimate_batch_bytes(n, t, shape, targets, stats_itemsize, gather=runner.gather,
                                           threads=n if batched else threads, n_loss=n_loss, queue_bytes=queue,
                                           keep_all_gradients=cfg.cosine_layers)

    def fits(items):
        parts, too_big, stack = [], [], [list(items)]
        while stack:
            part = stack.pop()
            e = estimate(part)
            if e <= budget:
                parts.append(part)
            elif len(part) == 1 and not explicit:
                # the default budget never refuses an example: the estimate is conservative (measured 2.4-3.7x over),
                # so an example alone is run, and a real out-of-memory error is the back-off's
                parts.append(part)
                note(f"layergrad: an example of {encoded[part[0]].n_tokens} tokens is estimated at {memory.gib(e)} GiB, "
                     f"over the default memory budget ({memory.gib(budget)} GiB); running it alone "
                     "(pass --max-memory to refuse such examples instead)")
            elif len(part) == 1:
                k = part[0]
                too_big.append((k, faults.does_not_fit(encoded[k].n_tokens, e, budget)))
                note(f"layergrad: an example of {encoded[k].n_tokens} tokens does not fit the memory budget alone "
                     f"(estimated {memory.gib(e)} GiB > {memory.gib(budget)} GiB); stored as failed without running it")
            else:
                h = len(part) // 2
                stack += [part[h:], part[:h]]  # the first half first: parts stay in order
        return parts, too_big

    return fits


def _runner(cfg: RunConfig, model, targets, tok, ifd_rule, n_layers: int) -> BatchRunner:
    """The batch runner with the statistics sink the options ask for (guarded against non-finite values)."""
    sink = BatchProgress(FiniteGuard(Measurer(stats_dtype=getattr(torch, vocab.STATS_DTYPES[cfg.stats_dtype]), spectrum_k=cfg.spectrum_k,
                                elementwise=cfg.elementwise, cosine=cfg.cosine, method=cfg.method,
                                cosine_layers=cfg.cosine_layers,
                                eig_batch=cfg.eig_batch, token_shares=cfg.token_shares,
                                gram_precision=cfg.gram_precision)), n_targets=len(targets))
    runner = BatchRunner(model, targets, sink, next(model.parameters()).device, pad_id_of(tok), ifd=ifd_rule)
    if cfg.token_shares:
        runner.shares = ShareLayout(depth_thirds(n_layers), tok)
    return runner


def _load_model(cfg: RunConfig, device: str):
    from layergrad.inputs.models import load_model

    return load_model(cfg.model, dtype=cfg.dtype, device=device, device_map=cfg.device_map,
                      trust_remote_code=cfg.trust_remote_code, progress=cfg.progress,
                      revision=cfg.revision, cache_dir=cfg.cache_dir, adapter=cfg.adapter,
                      adapter_params=cfg.adapter_params)


def _refuse_turnless(cfg: RunConfig, examples) -> None:
    """``--turns all`` needs chat records: any other record is bad input, named before the model loads."""
    if cfg.turns != "all":
        return
    from layergrad.inputs.data import Problem

    names = {"instruction": "instruction", "output": "output", "text": "text", **(cfg.fields or {})}
    bad = [Problem(ex.source, ex.index, names["text"] if ex.is_text else names["output"],
                   f"--turns all needs chat 'messages' records (assistant turns to score); this is "
                   f"{'a plain-text' if ex.is_text else 'an Alpaca'} record")
           for ex in examples if not ex.is_chat]
    if bad:
        raise DataError(bad, hint="Use --turns last for these records (or give them as 'messages' turns).")


def _refuse_unscorable(cfg: RunConfig, examples, encoded) -> None:
    """Nothing to score is bad input: refused before anything is written (unless ``--skip-invalid``)."""
    if not cfg.skip_invalid:
        unscorable = faults.unscorable_problems(examples, encoded, (cfg.fields or {}).get("output", "output"),
                                                 (cfg.fields or {}).get("text", "text"))
        if unscorable:
            raise DataError(unscorable, hint=faults.unscorable_hint(encoded))


def _plan(cfg: RunConfig, encoded, shard) -> list[Batch]:
    """The global batch plan of the computable examples (positions in ``encoded``), this shard's part of it."""
    computable = [k for k, e in enumerate(encoded) if e.skip_reason is None]
    batches = plan_batches([encoded[k].n_tokens for k in computable], cfg.batch_size, cfg.max_batch_tokens)
    batches = [Batch(b.index, tuple(computable[j] for j in b.items), b.max_len) for b in batches]
    return shard_batches(batches, *shard) if shard else batches


def _write_uncomputed(store: RunStore, cfg: RunConfig, examples, encoded, problems, done: set) -> None:
    rows = [example_of(ex, k, encoded[k], "skipped", encoded[k].skip_reason, None)
            for k, ex in enumerate(examples) if encoded[k].skip_reason is not None]
    rows += invalid_rows(problems, len(examples))
    rows = [r for r in rows if r["id"] not in done]
    if cfg.ifd:
        for r in rows:
            r.update(undefined(f"not computed ({r['status']}): {r['reason']}"))
    if rows:
        store.write_part(rows, [])
