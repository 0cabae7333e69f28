"""A short training-time study on the default model (SmolLM2-135M-Instruct), cheap enough for a CPU.

Two fine-tunes of the same initial weights, one on GSM8K answers without reasoning (no_cot) and one
on GPT-4o's detailed reasoning (with_cot_gpt4o): ``--steps`` optimizer steps of batch 2, lr 1e-5
(constant), fp32, chat prompts cut at 512 tokens. ``LayerGradCallback`` records the attention
modules (q, k, v, o of all 30 layers) of the training batch every ``--every`` steps, and a fixed probe
set of ``--probe`` held-out examples of the same style at those steps (group ``probe``: the same
examples each time, so its change is the weights' change). Then the by-step report of both runs.

    OMP_NUM_THREADS=2 PYTHONPATH=src python experiments/training_dynamics.py --out runs/training_dynamics

Needs /work/shared/data (or ``--data``); writes OUT/runs/<style>, OUT/report (steps.csv, layer_steps.csv,
figures) and prints the numbers the README quotes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

STYLES = {"no_cot": "gsm8k_train_no_cot.json", "with_cot": "gsm8k_train_with_cot_gpt4o.json"}


def dataset(tokenizer, records, max_length):
    from layergrad.inputs.data import load_examples
    from layergrad.inputs.prompting import encode

    exs, _ = load_examples([str(records)])
    out = []
    for ex in exs:
        enc = encode(ex, tokenizer, "chat", max_length)
        if enc.skip_reason is None:
            P = enc.n_prompt
            out.append({"input_ids": enc.input_ids, "labels": [-100] * P + enc.input_ids[P:]})
    return out


def collate(pad_id):
    import torch

    def fn(batch):
        t = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), t), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), t), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), t), dtype=torch.long)
        for r, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return fn


def fine_tune(style: str, args, out: Path) -> dict:
    from transformers import Trainer, TrainingArguments

    from layergrad.inputs.models import load_model
    from layergrad.integrations import LayerGradCallback
    from layergrad.run.plan import pad_id_of

    records = json.loads((args.data / STYLES[style]).read_text())
    n_train = args.steps * 2
    train_file = out / "data" / f"{style}_train.json"
    probe_file = out / "data" / f"{style}_probe.json"
    train_file.parent.mkdir(parents=True, exist_ok=True)
    train_file.write_text(json.dumps(records[:n_train]))
    probe_file.write_text(json.dumps(records[400:400 + args.probe]))  # held out: never in a training batch

    lm = load_model("default", dtype="float32", progress=False)
    model, tok = lm.model, lm.tokenizer
    model.train()
    cb = LayerGradCallback(out / "runs" / style, every_n_steps=args.every, modules="attn", probe=str(probe_file),
                           tokenizer=tok, prompt_mode="chat", max_length=args.max_length)
    targs = TrainingArguments(output_dir=str(out / "trainer" / style), per_device_train_batch_size=2, max_steps=args.steps,
                              learning_rate=1e-5, lr_scheduler_type="constant", use_cpu=True, save_strategy="no",
                              report_to=[], logging_steps=1, remove_unused_columns=False, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=dataset(tok, train_file, args.max_length),
                      data_collator=collate(pad_id_of(tok)), callbacks=[cb])
    t0 = time.perf_counter()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"style": style, "seconds": time.perf_counter() - t0, "losses": losses}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/training_dynamics"))
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "cot_500")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--probe", type=int, default=2)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--figure", type=Path, default=None, help="copy the nuclear-norm-against-step figure here (e.g. docs/...png)")
    args = p.parse_args()
    if not (args.data / STYLES["no_cot"]).exists():
        print(f"training_dynamics: {args.data} not found; pass --data DIR (the cot_500 folder)", file=sys.stderr)
        return 2
    summary = [fine_tune(style, args, args.out) for style in STYLES]

    import pandas as pd

    from layergrad.report.build import make_report

    rep = make_report([(s, args.out / "runs" / s) for s in STYLES], args.out / "report",
                      metrics=("nuclear", "effective_rank", "top1_share"), n_boot=1000, seed=0)
    steps = pd.read_csv(args.out / "report" / "steps.csv")
    for s in summary:
        print(f"{s['style']}: {args.steps} steps in {s['seconds']:.0f} s; training loss per step "
              + ", ".join(f"{x:.3f}" for x in s["losses"]))
    first, last = steps["step"].min(), steps["step"].max()
    sel = steps[(steps.segment != "all") & steps.step.isin([first, last]) & (steps.metric.isin(["nuclear", "effective_rank"]))]
    print(sel.pivot_table(index=["run", "metric", "role", "segment"], columns="step", values="mean").round(4).to_string())
    if args.figure:
        import shutil

        args.figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.out / "report" / "figures" / "steps_nuclear.png", args.figure)
    print(rep.index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
