"""Padded batches grouped by length, planned once for the whole dataset.

The plan depends only on the examples and the batch limits, never on which examples are
already done or which process runs them, so a resumed or sharded run computes every batch
exactly as an uninterrupted single-process run does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Batch:
    index: int
    items: tuple[int, ...]  # positions in the run's example list
    max_len: int

    @property
    def cost(self) -> int:
        return len(self.items) * self.max_len


def plan_batches(lengths: list[int], batch_size: int, max_batch_tokens: int, max_pad: float | None = None) -> list[Batch]:
    """Longest first (an out-of-memory error comes at the start), ties by position.

    ``max_pad``: a sequence shorter than ``(1 - max_pad)`` times its batch's longest starts a new batch
    (padding is pure waste where the compute is bound, as on a CPU); ``None``: no such bound.
    """
    order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
    batches: list[Batch] = []
    cur: list[int] = []
    cur_max = 0
    for k in order:
        L = lengths[k]
        new_max = max(cur_max, L)
        short = max_pad is not None and L < (1.0 - max_pad) * cur_max
        if cur and (len(cur) >= batch_size or new_max * (len(cur) + 1) > max_batch_tokens or short):
            batches.append(Batch(len(batches), tuple(cur), cur_max))
            cur, new_max = [], L
        cur.append(k)
        cur_max = new_max
    if cur:
        batches.append(Batch(len(batches), tuple(cur), cur_max))
    return batches


def shard_batches(batches: list[Batch], rank: int, world: int) -> list[Batch]:
    """Deterministic, disjoint shard balanced by token count (greedy: largest batch to least-loaded rank)."""
    loads = [0] * world
    owner = {}
    for b in sorted(batches, key=lambda b: (-b.cost, b.index)):
        r = min(range(world), key=lambda q: (loads[q], q))
        owner[b.index] = r
        loads[r] += b.cost
    return [b for b in batches if owner[b.index] == rank]


def pad_id_of(tokenizer) -> int:
    """The id that fills padded positions: the tokenizer's pad token, else its end of sequence, else 0.

    Padded positions are masked out of attention and the loss, so any id gives the same numbers.
    """
    for v in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if v is not None:
            return v
    return 0


def pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding: ``(n, t)`` ids and attention mask."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask
