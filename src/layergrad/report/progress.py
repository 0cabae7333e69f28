"""Progress while a page is built: a tqdm bar over its parts on stderr, silenced by ``--no-progress``."""
from __future__ import annotations

import sys


class Progress:
    """``steps = Progress(enabled, total)``; ``steps("curves")`` starts the part named (and counts the one
    before as done); ``steps.close()`` at the end. A part count off by a few only makes the bar end early or late."""

    def __init__(self, enabled: bool, total: int, desc: str = "report"):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="part", disable=not enabled, file=sys.stderr, leave=False)
        self.started = False

    def __call__(self, part: str) -> None:
        if self.started:
            self.bar.update()
        self.started = True
        self.bar.set_postfix_str(part, refresh=True)

    def close(self) -> None:
        if self.started:
            self.bar.update()
        self.bar.close()
