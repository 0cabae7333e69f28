"""``layergrad demo``: the embedded default model on the built-in fast/slow-thinking data."""
from __future__ import annotations

from pathlib import Path

from .config import RunConfig
from .synthetic import STYLES, write_dataset

#: The paper's names for the built-in response styles, fastest thinking first.
LABELS = {
    "answer_only": "None CoT",
    "short_rationale": "Simplified CoT",
    "detailed": "Detailed CoT",
    "irrelevant": "Irrelevant CoT",
}


def run_demo(out: str | Path, n: int = 12, limit_layers=None, progress: bool = True) -> int:
    from . import engine
    from .models import load_model

    out = Path(out)
    paths = write_dataset(out / "data", n=n, seed=0)
    print(f"built-in data: {n} arithmetic word problems x {len(STYLES)} response styles in {out / 'data'}")
    loaded = load_model("default")
    runs = []
    for style in STYLES:
        cfg = RunConfig(data=[str(paths[style])], out=str(out / "runs" / style), group=LABELS[style], progress=progress)
        s = engine.run(cfg, loaded=loaded)
        print(f"  {LABELS[style]:<15} {s.out}: {s.status_counts} ({s.seconds:.0f} s)")
        runs.append((LABELS[style], cfg.out))
    try:
        from .report import build_report
    except ImportError:
        return 0
    index = build_report(runs, out / "report")
    print(f"report: {index}")
    return 0
