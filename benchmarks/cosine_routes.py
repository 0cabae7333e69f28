"""Gradient cosines from the factors against from the dense gradients (``spectra.products.InnerOperand``):
the time of one layer's cosines (q~o, k~v, and each module with the same role one layer up) for one
example of T tokens, in the default model's shapes (SmolLM2-135M: q, o 576 x 576; k, v 192 x 576),
float64 (the statistics' precision), both routes side by side in one process, alternating, median of
``--repeats``. Prints a Markdown table; ``auto`` is the route ``inner_route`` picks.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/cosine_routes.py --tokens 128 512 2048 4096
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from layergrad.spectra.products import InnerOperand, inner_route

SHAPES = {"q": (576, 576), "k": (192, 576), "v": (192, 576), "o": (576, 576)}  # role -> (out, in)


def one_layer(t: int, route: str, gen: torch.Generator) -> float:
    """Seconds for two layers' operands and their cosines (q~o, k~v, and the next-layer pairs)."""
    X = {(layer, r): torch.randn(1, t, i, dtype=torch.float64, generator=gen) for layer in (0, 1) for r, (o, i) in SHAPES.items()}
    D = {(layer, r): torch.randn(1, t, o, dtype=torch.float64, generator=gen) for layer in (0, 1) for r, (o, i) in SHAPES.items()}
    t0 = time.perf_counter()
    ops = {}
    for key in X:
        o, i = SHAPES[key[1]]
        ops[key] = InnerOperand(X[key], D[key], inner_route(t, i, o, pairs=2) if route == "auto" else route)
    for layer in (0, 1):
        ops[(layer, "q")].cosine(ops[(layer, "o")])
        ops[(layer, "k")].cosine(ops[(layer, "v")])
    for r in SHAPES:
        ops[(0, r)].cosine(ops[(1, r)])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 2048, 4096])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| tokens T | factors (s) | dense (s) | factors / dense | auto picks (q, k) |")
    print("|---:|---:|---:|---:|---|")
    for t in args.tokens:
        times = {"gram": [], "dense": []}
        for _ in range(args.repeats):
            for route in ("gram", "dense"):  # alternating: drift on a shared machine hits both
                times[route].append(one_layer(t, route, gen))
        g, d = statistics.median(times["gram"]), statistics.median(times["dense"])
        print(f"| {t} | {g:.4f} | {d:.4f} | {g / d:.2f} | {inner_route(t, 576, 576, pairs=2)}, {inner_route(t, 576, 192, pairs=2)} |")


if __name__ == "__main__":
    main()
