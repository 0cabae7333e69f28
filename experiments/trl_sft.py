"""TRL SFT of the default model (SmolLM2-135M-Instruct) with LayerGradCallback and live curves in TensorBoard.

A conversational (``messages``) dataset of the built-in arithmetic problems with detailed answers, trained
with TRL's ``SFTTrainer`` and ``assistant_only_loss`` (the loss, and the recorded response tokens, are
the assistant turns). The callback records the attention modules of the training batch every ``--every``
steps into OUT/spectra and adds ``layergrad/<metric>/<role>/<third>`` to the trainer's logs, which
``report_to="tensorboard"`` writes to OUT/tensorboard beside the loss. At the end the event file is read
back and drawn (``--figure``).

    OMP_NUM_THREADS=2 PYTHONPATH=src python experiments/trl_sft.py --out runs/trl_sft --steps 40 --every 4
    tensorboard --logdir runs/trl_sft/tensorboard

Needs the ``train`` extra (``pip install 'layergrad[train]'``: trl, tensorboard). fp32 by default on a CPU
(``--bf16`` for TRL's default bf16 autocast); the per-example rows are in OUT/spectra (``layergrad report
--checkpoints`` reads them by step).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

# The model's own chat template, with the assistant turns inside {% generation %} (TRL's assistant_only_loss
# needs the marks; SmolLM2's template has none). Same text as SmolLM2's template for these turns.
TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}"
    "<|im_end|>{% endgeneration %}{% else %}{{ message['content'] }}<|im_end|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def conversations(n: int) -> list[dict]:
    from layergrad.inputs.synthetic import make_dataset

    return [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
            for r in make_dataset(n=n, seed=0)["detailed"]]


def train(args) -> Path:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from layergrad.inputs.models import default_model_folder
    from layergrad.integrations import LayerGradCallback

    out = Path(args.out)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")  # transformers 5: where TensorBoardCallback writes
    folder = default_model_folder()  # converted once from the embedded GGUF
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = TEMPLATE
    config = SFTConfig(
        output_dir=str(out / "trainer"), per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=args.lr,
        lr_scheduler_type="constant", logging_steps=args.every, save_strategy="no", report_to=["tensorboard"],
        use_cpu=True, bf16=args.bf16, assistant_only_loss=True, max_length=args.max_length, seed=0, disable_tqdm=True,
    )
    cb = LayerGradCallback(out / "spectra", every_n_steps=args.every, modules="attn")
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(conversations(args.examples)),
                         processing_class=tok, callbacks=[cb])
    trainer.train()
    return out / "tensorboard"


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir)).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def figure(scalars: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(suffix):
        tag = next(t for t in scalars if t.endswith(suffix))
        steps, values = zip(*scalars[tag])
        return steps, values

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(*series("train/loss"), label="trainer loss (mean since last log)")
    axes[0].plot(*series("layergrad/loss"), "o-", label="recorded examples' own loss")
    axes[0].set_title("loss")
    for metric, ax in (("nuclear", axes[1]), ("effective_rank", axes[2])):
        for role, style in (("q", "-"), ("v", "--")):
            for third, colour in (("early", "C0"), ("middle", "C1"), ("late", "C2")):
                ax.plot(*series(f"layergrad/{metric}/{role}/{third}"), style, color=colour, label=f"{role} {third}")
        ax.set_title(f"{metric.replace('_', ' ')} (mean over the step's examples)")
    for ax in axes:
        ax.set_xlabel("trainer step")
        ax.legend(fontsize=7)
    fig.suptitle("TRL SFTTrainer on SmolLM2-135M-Instruct: live layergrad curves from the TensorBoard event file", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/trl_sft")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--examples", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--figure", default=None, help="PNG of the logged curves (default OUT/trl_sft_live.png)")
    args = p.parse_args()
    logdir = train(args)
    scalars = read_scalars(logdir)
    path = Path(args.figure or Path(args.out) / "trl_sft_live.png")
    figure(scalars, path)
    n = sum("layergrad/" in t for t in scalars)
    print(f"{n} layergrad curves in {logdir}; figure {path}")


if __name__ == "__main__":
    main()
