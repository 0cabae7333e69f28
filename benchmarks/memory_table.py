"""Peak memory of `layergrad run` against a plain training step, one example of T tokens, default model.

Each (method, T) runs in a fresh process; the figure is that process's peak resident set size
(``ru_maxrss``), which includes the model's weights and the libraries. The example is a GSM8K
rationale repeated until the text has T tokens (prompt: its question), scored in chat mode as
`layergrad run` scores it. Method ``step``: one forward and backward of the same example with the
weights' gradients (Hugging Face's ``labels`` loss over the response tokens, model in eval mode);
method ``layergrad``: ``layergrad run`` with default options (``--modules all``, float32 statistics);
``--pair``: also ``layergrad run`` on TWO such examples with default batching (one batch of two
unless the memory plan splits it).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/memory_table.py --lengths 512 1024 2048 4096
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cot_500" / "gsm8k_train_with_cot_gpt4o.json"


def example(tokens: int, tok) -> dict:
    rec = json.loads(DATA.read_text())[0]
    out = rec["output"]
    while len(tok(rec["instruction"] + "\n" + out)["input_ids"]) < tokens + 64:
        out = out + "\n" + rec["output"]
    ids = tok(out)["input_ids"]
    return {"instruction": rec["instruction"], "input": "", "output": tok.decode(ids[: max(1, tokens - 80)])}


def child(method: str, tokens: int, workdir: str) -> None:
    import torch

    from layergrad.inputs.models import load_model

    lm = load_model("default", progress=False)
    rec = example(tokens, lm.tokenizer)
    data = Path(workdir) / "d.json"
    recs = [rec] if method != "layergrad2" else [rec, dict(rec, instruction=rec["instruction"] + " ")]
    data.write_text(json.dumps(recs))
    if method in ("layergrad", "layergrad2"):
        import gc

        from layergrad.cli import main

        del lm  # the run loads its own copy; only one is alive while it runs
        gc.collect()
        code = main(["run", "--data", str(data), "--out", str(Path(workdir) / "run"), "--max-length", str(tokens),
                     "--no-progress"])
        assert code == 0
    else:
        from layergrad.inputs.data import load_examples
        from layergrad.inputs.prompting import encode

        ex = load_examples([str(data)])[0][0]
        enc = encode(ex, lm.tokenizer, "chat", tokens)
        ids = torch.tensor([enc.input_ids])
        labels = ids.clone()
        labels[0, : max(enc.n_prompt, 1)] = -100
        lm.model.eval()
        loss = lm.model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"method": method, "tokens": tokens, "peak_gib": round(peak, 2)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--pair", action="store_true", help="also two examples of the longest length, default batching")
    p.add_argument("--child", nargs=2, metavar=("METHOD", "TOKENS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        with tempfile.TemporaryDirectory() as tmp:
            child(a.child[0], int(a.child[1]), tmp)
        return
    rows = []
    for t in a.lengths:
        for method in ("step", "layergrad"):
            env = dict(os.environ, PYTHONPATH=str(REPO / "src"), TRANSFORMERS_VERBOSITY="error")
            r = subprocess.run([sys.executable, __file__, "--child", method, str(t)], env=env, capture_output=True, text=True)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
            rows.append(json.loads(line[-1]) if line else {"method": method, "tokens": t, "peak_gib": None, "error": r.stderr[-300:]})
            print(rows[-1], file=sys.stderr, flush=True)
    if a.pair:
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"), TRANSFORMERS_VERBOSITY="error")
        t = max(a.lengths)
        r = subprocess.run([sys.executable, __file__, "--child", "layergrad2", str(t)], env=env, capture_output=True, text=True)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        print(line[-1] if line else r.stderr[-300:], file=sys.stderr, flush=True)
        print(f"two examples of {t} tokens, default batching: {json.loads(line[-1])['peak_gib'] if line else '-'} GiB")
    print("| tokens | training step (GiB) | layergrad run (GiB) | ratio |\n| --- | --- | --- | --- |")
    for t in a.lengths:
        s = next(r["peak_gib"] for r in rows if r["tokens"] == t and r["method"] == "step")
        g = next(r["peak_gib"] for r in rows if r["tokens"] == t and r["method"] == "layergrad")
        ratio = f"{g / s:.2f}" if s and g else "-"
        print(f"| {t} | {s} | {g} | {ratio} |")


if __name__ == "__main__":
    main()
