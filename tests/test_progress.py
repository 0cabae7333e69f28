"""Progress you can see: the run's bar moves module by module inside a batch (with an ETA), never past
the batch's end, and ends on the exact count; the demo states how long it takes in its first lines."""
from __future__ import annotations

import io

import pytest
import torch
import tqdm.auto

from conftest import REPO, make_model
from helpers import MANY, config, loaded
from layergrad.run import engine


class _Inner:
    def __init__(self):
        self.accepted = []

    def begin(self, *a):
        pass

    def accept(self, target, X, D, x_key=None):
        self.accepted.append(target)

    def finish(self):
        return "measured"


def test_the_bar_moves_per_module_and_never_passes_the_batch():
    from layergrad.run.progress import BAR_FORMAT, BatchProgress

    inner = _Inner()
    sink = BatchProgress(inner, n_targets=4)
    with tqdm.auto.tqdm(total=16, file=io.StringIO(), unit="ex", bar_format=BAR_FORMAT, mininterval=0) as bar:
        sink.within(bar, 8)  # the first batch: 8 examples
        seen = []
        for k in range(4):
            sink.accept(f"m{k}", torch.zeros(8, 3, 2), torch.zeros(8, 3, 5))
            seen.append(bar.n)
        assert seen == [2, 4, 6, 8] and len(inner.accepted) == 4 and sink.finish() == "measured"
        sink.accept("m0", torch.zeros(4, 3, 2), torch.zeros(4, 3, 5))  # a split batch delivering again: capped
        assert bar.n == 8
        sink.within(bar, 16)
        sink.accept("m0", torch.zeros(8, 3, 2), torch.zeros(8, 3, 5))
        assert bar.n == 10
        sink.settle()
        assert bar.n == 16
        assert "16/16 ex" in bar.format_meter(**bar.format_dict)


def test_a_run_moves_its_bar_inside_a_batch(tmp_path, tokenizer, monkeypatch):
    positions = []

    class Recording(tqdm.auto.tqdm):
        def update(self, n=1):
            super().update(n)
            positions.append(self.n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    model = make_model("llama", len(tokenizer))
    cfg = config(tmp_path, MANY[:8], batch_size=8, max_batch_tokens=10_000, modules="attn")
    cfg.progress = True
    engine.run(cfg, loaded=loaded(model, tokenizer))
    inside = [p for p in positions if 0 < p < 8]
    assert len(inside) >= 3 and inside == sorted(inside)  # one batch of 8, seen moving before it ends
    assert positions[-1] == 8


def test_the_demo_says_how_long_it_takes_first():
    head = "\n".join((REPO / "experiments" / "demo.toml").read_text().splitlines()[:8])
    assert "How long" in head and "Measured" in head and "wall clock" in head and "machine" in head, head
