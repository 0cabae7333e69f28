"""Output files of the commands are never replaced silently: an existing one is refused unless ``--force``."""
from __future__ import annotations

import re
import time
from pathlib import Path

from layergrad.errors import LayergradError


class OutputExists(LayergradError):
    """An output file exists already and ``--force`` was not given."""


def refuse_existing(paths, force: bool, flag: str = "--force") -> None:
    """Raise :class:`OutputExists` naming every path of ``paths`` that exists (unless ``force``)."""
    there = [str(p) for p in paths if p is not None and Path(p).exists()]
    if there and not force:
        raise OutputExists(f"{', '.join(there)} exist{'s' if len(there) == 1 else ''} already; give {flag} to replace "
                           f"{'it' if len(there) == 1 else 'them'}, or choose another output name")


def add_force(p) -> None:
    p.add_argument("--force", action="store_true", help="replace output files that exist already (default: refuse)")


def report_there(folder: Path) -> str | None:
    """A line describing the report an output folder holds already (``None``: none)."""
    index = Path(folder) / "index.html"
    if not index.exists():
        return None
    made = time.strftime("%Y-%m-%d %H:%M", time.localtime(index.stat().st_mtime))
    title = re.search(r"<title>(.*?)</title>", index.read_text(encoding="utf-8", errors="replace")[:20000], re.S)
    what = f" ({title.group(1).strip()[:120]})" if title else ""
    return f"{folder} holds a report made {made}{what}: its files are replaced by this one"
