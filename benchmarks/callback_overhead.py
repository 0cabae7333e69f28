"""Overhead of LayerGradCallback: the same Trainer run with and without it, on the default model
(SmolLM2-135M-Instruct, from the embedded wheel) or a random Llama of a given width.

In-process comparison (prints a Markdown table row per setting, attn and all modules, every 10 and 1):

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/callback_overhead.py --hidden 256 --layers 4 --steps 30

One training per process, for paired whole-process timings (``--every 0``: no callback), e.g. with
``/usr/bin/time -v`` or hyperfine, A/B in turn:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/callback_overhead.py --model default --steps 20 --once --every 10
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/callback_overhead.py --model default --steps 20 --once --every 0
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def make_model(args):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if args.model == "default":
        from layergrad.inputs.models import default_model_folder

        model = AutoModelForCausalLM.from_pretrained(default_model_folder(), dtype=torch.float32)
        return model, model.config.vocab_size
    cfg = LlamaConfig(vocab_size=512, hidden_size=args.hidden, intermediate_size=args.hidden * 2, num_hidden_layers=args.layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(cfg), 512


def run(args, callback):
    from transformers import Trainer, TrainingArguments

    model, vocab = make_model(args)
    g = torch.Generator().manual_seed(1)
    ds = []
    for _ in range(args.steps * args.batch):
        ids = torch.randint(3, vocab, (args.seq,), generator=g).tolist()
        ds.append({"input_ids": ids, "labels": [-100] * (args.seq // 2) + ids[args.seq // 2:], "attention_mask": [1] * args.seq})
    collate = lambda b: {k: torch.tensor([x[k] for x in b]) for k in b[0]}  # noqa: E731
    with tempfile.TemporaryDirectory() as d:
        targs = TrainingArguments(output_dir=d, per_device_train_batch_size=args.batch, max_steps=args.steps, report_to=[],
                                  save_strategy="no", use_cpu=True, logging_steps=10 ** 6, disable_tqdm=True,
                                  remove_unused_columns=False)
        cbs = [] if callback is None else [callback(Path(d) / "rec")]
        t = Trainer(model=model, args=targs, train_dataset=ds, data_collator=collate, callbacks=cbs)
        t0 = time.perf_counter()
        t.train()
        return time.perf_counter() - t0


def main():
    from layergrad.integrations import LayerGradCallback

    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["random", "default"], default="random")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--modules", default="attn")
    p.add_argument("--once", action="store_true", help="one training (with --every N, 0 = no callback); print its time")
    p.add_argument("--every", type=int, default=10)
    args = p.parse_args()
    if args.once:
        cb = None if args.every == 0 else (lambda out: LayerGradCallback(out, every_n_steps=args.every, modules=args.modules))
        print(f"train {run(args, cb):.2f} s (every {args.every}, {args.modules})")
        return
    base = min(run(args, None) for _ in range(2))
    print(f"| hidden {args.hidden}, {args.layers} layers, batch {args.batch} x {args.seq} tokens, {args.steps} steps | plain | {base:.2f} s | 1.00x |")
    for modules in ("attn", "all"):
        for every in (10, 1):
            s = run(args, lambda out: LayerGradCallback(out, every_n_steps=every, modules=modules))
            print(f"| | {modules}, every {every} | {s:.2f} s | {s / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
