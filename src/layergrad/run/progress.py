"""Progress inside a batch: the run's bar moves as each measured module of a batch is done, not once per
batch, so a long batch (a large model, long examples) shows movement and an ETA from its first module on."""
from __future__ import annotations

from torch import Tensor

from layergrad.measure.sink import Measured

#: the run's bar: fractions of examples move it, shown rounded (tqdm's own ``{n_fmt}`` would show 3.38/12)
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} {unit} [{elapsed}<{remaining}]"


class BatchProgress:
    """A capture sink in front of another (a :class:`~layergrad.measure.guard.FiniteGuard`) that advances a tqdm
    bar by ``n / n_targets`` examples for each module whose statistics a batch of ``n`` examples has delivered.

    :meth:`within` names the bar and where it stands after the batch; the bar never passes that point (a
    batch split after running out of memory delivers its modules again), and :meth:`settle` puts it there.
    """

    def __init__(self, sink, n_targets: int):
        self.sink = sink
        self.n_targets = max(1, n_targets)
        self.bar = None
        self.end = 0.0

    def within(self, bar, end: float) -> None:
        self.bar, self.end = bar, end

    def settle(self) -> None:
        if self.bar is not None and self.bar.n != self.end:
            self.bar.update(self.end - self.bar.n)

    def begin(self, mask: Tensor, consumers: dict, by_layer_role: dict) -> None:
        self.sink.begin(mask, consumers, by_layer_role)

    def accept(self, target, X: Tensor, D: Tensor, x_key=None) -> None:
        self.sink.accept(target, X, D, x_key)
        if self.bar is not None:
            step = min(X.shape[0] / self.n_targets, self.end - self.bar.n)
            if step > 0:
                self.bar.update(step)

    def finish(self) -> Measured:
        return self.sink.finish()
