"""Run by tests/test_trl_distributed.py, under torchrun (or alone): a tiny float64 GPT-2 trained twice with the
same examples in order, without and then with LayerGradCallback; writes each rank's micro-batch losses, a
flag for bitwise-equal losses and weights, and the live summaries of its log history.

    torchrun --standalone --nproc_per_node 2 tests/torchrun_callback.py OUT PER_DEVICE_BATCH
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import SequentialSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_model, make_tokenizer, write_json  # noqa: E402
from helpers import RECS, collate, items, loss64  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from layergrad.integrations import LayerGradCallback  # noqa: E402

RECORDS12 = RECS + [{"instruction": "Name a colour.", "input": "", "output": "Blue."}]  # 3 steps of 4 examples


class InOrder(Trainer):
    """The examples in file order: the single process's batch of 4 is the two ranks' batches of 2."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def train(out: Path, batch: int, callback: bool):
    tok = make_tokenizer()
    rank = int(os.environ.get("RANK", "0"))
    data = write_json(out / f"d-{rank}.json", RECORDS12)
    model = make_model("gpt2", len(tok), dtype="float64")
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.loss_function = loss64  # the trainer's reduction in float64 (HF's casts the logits to float32)
    model.set_attn_implementation("sdpa")
    model.train()
    losses = []
    hook = model.register_forward_hook(lambda m, a, o: losses.append(float(o["loss"])) if m.training else None)
    args = TrainingArguments(output_dir=str(out / "trainer"), per_device_train_batch_size=batch, max_steps=3, learning_rate=5e-3,
                             logging_steps=1, save_strategy="no", report_to=[], seed=0, use_cpu=True, ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,
                             dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
    cbs = [LayerGradCallback(out / "rec", every_n_steps=2, modules="all", stats_dtype="float64", spectrum_k=None)] if callback else []
    ds = [{k: v for k, v in it.items() if k != "record"} for it in items(tok, data)]
    trainer = InOrder(model=model, args=args, train_dataset=ds, data_collator=collate(tok.pad_token_id), callbacks=cbs)
    trainer.train()
    hook.remove()
    live = [{k: v for k, v in e.items() if k.startswith("layergrad/") or k == "step"} for e in trainer.state.log_history
            if any(k.startswith("layergrad/") for k in e)]
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, live


def main():
    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    plain_losses, plain_w, _ = train(out, batch, callback=False)
    losses, w, live = train(out, batch, callback=True)
    same = plain_losses == losses and all(torch.equal(plain_w[k], w[k]) for k in w)
    (out / f"losses-r{rank}.json").write_text(json.dumps({"losses": losses, "bitwise_unchanged": same, "live": live}))


if __name__ == "__main__":
    main()
