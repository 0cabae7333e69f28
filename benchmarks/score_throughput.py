"""Throughput of ``layergrad score`` against the reference scripts' one-at-a-time loops, same model and data.

One whole process per measurement (run it under a process timer; BENCHMARKS.md gives the command):

    PYTHONPATH=src python benchmarks/score_throughput.py ifd layergrad   --n 64   # layergrad score --ifd-model default
    PYTHONPATH=src python benchmarks/score_throughput.py ifd reference   --n 64   # Superfiltering's loop, batch size 1
    PYTHONPATH=src python benchmarks/score_throughput.py reward layergrad --n 64  # layergrad score --reward-model RM
    PYTHONPATH=src python benchmarks/score_throughput.py reward reference --n 64  # the paper's pipeline, batch size 1

Data: the first ``--n`` records of ``--data`` (default: the shared gsm8k_train_with_cot.json).
IFD model: the embedded default (SmolLM2-135M-Instruct, fp32 on CPU), max length 1024.
Reward model: that model's weights as a ``LlamaForSequenceClassification`` (a random one-output head,
saved once under the temporary folder with the model's own chat template): a 135M reward model
(there is no small public reward model offline here); the numbers are not rewards, the work is.

The reference loops are written here, faithful to the released code:

* IFD: Superfiltering ``code_ifd/data_analysis.py`` / Gradient_Unified ``metrics/cal_ifd.py``: per
  record, ``tokenizer.encode(instruction + "\\n" + output, truncation=True, max_length=1024)``, labels
  masked up to ``len(tokenizer.encode(text[:text.rfind(output)]))``, ``model(input_ids, labels=...)``;
  then ``tokenizer.encode(output, truncation=True, max_length=1024 - len(prompt ids) + 1)`` with
  ``labels = input_ids``; the model loaded with ``output_hidden_states=True`` as there.
* reward: Gradient_Unified ``metrics/cal_reward.py``: ``pipeline("sentiment-analysis", model=RM)``
  called per record with ``apply_chat_template(...).replace(bos_token, "")``, ``function_to_apply="none"``,
  ``return_all_scores=True`` (``top_k=None`` in transformers 5), ``batch_size=1``.

Prints one line: ``<what> <impl> n=<n> seconds=<s> examples_per_s=<r>`` (the scoring loop alone,
after loading; the process timer measures the whole process).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cot_500" / "gsm8k_train_with_cot.json"
RM_DIR = Path(tempfile.gettempdir()) / "layergrad-bench-rm"


def records(path: Path, n: int) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))[:n]


def reward_model_folder() -> Path:
    """The default model's weights as a one-output sequence classifier, saved once."""
    if (RM_DIR / "config.json").exists():
        return RM_DIR
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from layergrad.inputs.models import default_model_folder

    src = default_model_folder()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src)
    model.config.pad_token_id = tok.pad_token_id
    tmp = RM_DIR.with_name(RM_DIR.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(RM_DIR)
    return RM_DIR


def ifd_reference(recs, max_length=1024) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layergrad.inputs.models import default_model_folder

    folder = default_model_folder()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_hidden_states=True).eval()
    t0 = time.perf_counter()
    for r in recs:
        instruction = r["instruction"] + ("\n" + r["input"] if r.get("input") else "") + "\n"
        text = instruction + r["output"]
        ids = tok.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
        start = len(tok.encode(text[:text.rfind(r["output"])]))
        labels = ids.clone()
        labels[0, :start] = -100
        with torch.no_grad():
            loss_cond = model(ids, labels=labels).loss
        alone = tok.encode(r["output"], return_tensors="pt", truncation=True, max_length=max_length - start + 1)
        with torch.no_grad():
            loss_alone = model(alone, labels=alone.contiguous()).loss
        _ = torch.exp(loss_cond) / torch.exp(loss_alone)
    return time.perf_counter() - t0


def reward_reference(recs) -> float:
    import torch
    from transformers import AutoTokenizer, pipeline

    folder = reward_model_folder()
    tok = AutoTokenizer.from_pretrained(folder)
    pipe = pipeline("sentiment-analysis", model=str(folder), tokenizer=tok, device="cpu",
                    model_kwargs={"dtype": torch.float32})
    # the released call's return_all_scores=True is top_k=None in transformers 5 (every label's score)
    kw = {"top_k": None, "function_to_apply": "none", "batch_size": 1}
    t0 = time.perf_counter()
    for r in recs:
        chat = [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)
        text = text.replace(tok.bos_token, "") if tok.bos_token else text
        _ = pipe([text], **kw)[0][0]["score"]
    return time.perf_counter() - t0


def layergrad_score(what: str, recs, batch_size: int) -> float:
    from layergrad import cli

    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data.json"
        data.write_text(json.dumps(recs), encoding="utf-8")
        flag = ["--ifd-model", "default"] if what == "ifd" else ["--reward-model", str(reward_model_folder())]
        # timed from here: model loading included (it is in the reference's process time too, outside its loop)
        t0 = time.perf_counter()
        rc = cli.main(["score", str(data), "--out", str(Path(d) / "out"), *flag, "--batch-size", str(batch_size),
                       "--no-progress"])
        if rc != 0:
            sys.exit(rc)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["ifd", "reward"])
    ap.add_argument("impl", choices=["layergrad", "reference"])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--batch-size", type=int, default=16)
    a = ap.parse_args()
    recs = records(a.data, a.n)
    if a.impl == "layergrad":
        s = layergrad_score(a.what, recs, a.batch_size)
    else:
        s = ifd_reference(recs) if a.what == "ifd" else reward_reference(recs)
    print(f"{a.what} {a.impl} n={len(recs)} seconds={s:.2f} examples_per_s={len(recs) / s:.2f}")


if __name__ == "__main__":
    main()
