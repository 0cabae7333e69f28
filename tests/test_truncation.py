"""Length control by truncation (``run --truncate-response K`` / ``--truncate-to RUN_DIR``) against an oracle.

The oracle shares no code with the package: it loads the saved tiny fp64 Llama and its tokenizer with
transformers' Auto classes, builds the base-mode text itself (``instruction [+ "\\n" + input] + "\\n" +
output``), finds the first response token from the offsets, CUTS THE TOKEN IDS itself after the k-th
response token (k = K, or the partner's response-token count it also counts itself from the partner's
records), masks the loss itself (mean natural-log cross-entropy of the kept response tokens), runs
autograd on every weight (``.grad``) and computes the metrics from ``torch.linalg.svdvals`` with its
own formulas. The package is only run (``layergrad.cli.main``) and read (``load_results``).
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import RECORDS, save_model, write_json
from layergrad.cli import main
from layergrad.store import load_results

TOL = 1e-8  # relative, fp64 model and statistics
ROLES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


# ------------------------------------------------------------------------------------------ oracle
def oracle_tokens(tok, rec) -> tuple[list[int], list[int]]:
    """Token ids of the base-mode text and the positions of its response tokens (loss targets)."""
    prompt = rec["instruction"] + ("\n" + rec["input"] if rec.get("input") else "")
    text, start = prompt + "\n" + rec["output"], len(prompt) + 1
    enc = tok(text, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    first = next(k for k, (a, b) in enumerate(offsets) if a >= start and b > a)
    return ids, list(range(max(first, 1), len(ids)))


def oracle_cut(ids: list[int], targets: list[int], k: int) -> tuple[list[int], list[int]]:
    """The example cut after its k-th response token: ids up to and including it, and its k targets."""
    if len(targets) <= k:
        return ids, targets
    return ids[: targets[k - 1] + 1], targets[:k]


def oracle_metrics(g: torch.Tensor) -> dict:
    s = torch.linalg.svdvals(g.to(torch.float64))
    tot, s1 = s.sum().item(), s[0].item()
    p = (s / tot).tolist()
    return {"nuclear": tot, "spectral": s1, "frobenius": math.sqrt(sum(x * x for x in s.tolist())),
            "top1_share": s1 / tot, "effective_rank": math.exp(-sum(x * math.log(x) for x in p if x > 0)),
            "stable_rank": sum(x * x for x in s.tolist()) / (s1 * s1)}


def oracle(folder, cases) -> dict:
    """``cases``: (record, k or None) -> {(response tokens measured, loss, {(layer, role): metrics})} by position."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="sdpa").eval()
    out = []
    for rec, k in cases:
        ids, targets = oracle_tokens(tok, rec)
        full = len(targets)
        if k is not None:
            ids, targets = oracle_cut(ids, targets, k)
        model.zero_grad()
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits[0].to(torch.float64)
        t = torch.tensor(targets)
        loss = F.cross_entropy(logits[t - 1], x[0, t], reduction="mean")
        loss.backward()
        mets = {}
        for name, prm in model.named_parameters():
            parts = name.split(".")
            if len(parts) > 4 and parts[1] == "layers" and parts[-2] in ROLES:
                mets[(int(parts[2]), ROLES[parts[-2]])] = oracle_metrics(prm.grad)
        out.append({"full": full, "n": len(targets), "n_tokens": len(ids), "loss": loss.item(), "metrics": mets})
    return out


def oracle_response_count(folder, rec) -> int:
    from transformers import AutoTokenizer

    return len(oracle_tokens(AutoTokenizer.from_pretrained(folder), rec)[1])


def assert_rows_match(res, ids, expected):
    mods = res.modules.set_index(["id", "layer", "role"])
    ex = res.examples.set_index("id")
    for eid, want in zip(ids, expected):
        assert ex.loc[eid, "status"] == "ok"
        assert int(ex.loc[eid, "n_response_tokens"]) == want["n"]
        assert int(ex.loc[eid, "n_response_tokens_full"]) == want["full"]
        assert int(ex.loc[eid, "n_tokens"]) == want["n_tokens"]
        assert ex.loc[eid, "loss"] == pytest.approx(want["loss"], rel=1e-10)
        assert len(want["metrics"]) == 7 * res.manifest["n_layers"]  # every layer's 7 roles
        for (layer, role), m in want["metrics"].items():
            row = mods.loc[(eid, layer, role)]
            for metric, v in m.items():
                assert abs(row[metric] - v) <= TOL * abs(v), (eid, layer, role, metric, row[metric], v)


# ------------------------------------------------------------------------------------------ setup
DETAILED = [dict(r) for r in RECORDS[:4]]  # responses of 1 to ~40 tokens
SHORT = [  # the same instructions (the partners), shorter answers; one instruction has no partner
    {"instruction": RECORDS[0]["instruction"], "input": "", "output": "42."},
    {"instruction": RECORDS[2]["instruction"], "input": RECORDS[2]["input"], "output": "7 apples now."},
    {"instruction": RECORDS[3]["instruction"], "input": "", "output": "Seven, since 3 + 4 = 7."},
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer):
    return save_model(tmp_path_factory.mktemp("model"), "llama", tokenizer)


def run(folder, data, out, *extra) -> int:
    """The exit status of ``layergrad run`` (argparse's own errors exit 2 by SystemExit, as a process would)."""
    try:
        return _main(["run", "--model", str(folder), "--data", str(data), "--out", str(out), "--prompt-mode", "base",
                 "--stats-dtype", "float64", "--modules", "all", "--no-progress", *extra])
    except SystemExit as e:
        return int(e.code)


def _main(argv) -> int:
    return main(argv)


def ids_in_order(res):
    return list(res.examples.sort_values("index")["id"])


# ------------------------------------------------------------------------------------------ tests
def test_truncate_response_equals_the_oracle_on_cut_token_ids(tmp_path, folder, capsys):
    data = write_json(tmp_path / "detailed.json", DETAILED)
    k = 3
    assert run(folder, data, tmp_path / "cut", "--truncate-response", str(k)) == 0
    assert "--truncate-response 3: " in capsys.readouterr().out
    res = load_results(tmp_path / "cut")
    want = oracle(folder, [(r, k) for r in DETAILED])
    assert [w["n"] for w in want] == [min(k, w["full"]) for w in want] and any(w["full"] > k for w in want)
    assert any(w["full"] <= k for w in want)  # "no" (1 token) stays whole
    assert_rows_match(res, ids_in_order(res), want)
    assert (res.examples["truncate_at"] == k).all() and res.examples["truncate_partner"].isna().all()
    assert res.manifest["truncate_response"] == k and res.manifest["truncate_to"] is None


def test_truncate_to_cuts_each_to_its_partners_length_and_counts_the_unpaired(tmp_path, folder, capsys):
    short = write_json(tmp_path / "short.json", SHORT)
    data = write_json(tmp_path / "detailed.json", DETAILED)
    assert run(folder, short, tmp_path / "short") == 0
    capsys.readouterr()
    assert run(folder, data, tmp_path / "cut", "--truncate-to", str(tmp_path / "short")) == 0
    printed = capsys.readouterr().out
    assert "1 skipped" in printed and "1 skipped (no usable --truncate-to partner" in printed

    res = load_results(tmp_path / "cut")
    partner = load_results(tmp_path / "short").examples.set_index("instruction")
    ex = res.examples.sort_values("index").reset_index(drop=True)
    lone = ex.iloc[1]  # "Would a lion salute a lieutenant?": no partner
    assert lone["status"] == "skipped" and lone["reason"].startswith("no usable --truncate-to partner: no example of ")
    assert "same instruction" in lone["reason"]
    paired = [0, 2, 3]
    ks = [oracle_response_count(folder, SHORT[j]) for j in range(3)]  # the oracle's own count of the partners
    want = oracle(folder, [(DETAILED[i], k) for i, k in zip(paired, ks)])
    assert all(w["n"] == k for w, k in zip(want, ks))  # every detailed answer is longer than its partner
    assert_rows_match(res, list(ex.loc[paired, "id"]), want)
    for i, k in zip(paired, ks):
        row = ex.iloc[i]
        assert row["truncate_at"] == k and row["truncate_partner"] == partner.loc[row["instruction"], "id"]
    m = res.manifest
    assert m["truncate_to"] == "../short" and m["truncate_to_key"] == "instruction" and m["truncate_to_groups"] == ["short"]


def test_a_failed_or_empty_partner_is_a_reason_not_a_silent_drop(tmp_path, folder):
    from layergrad.store import RunStore
    from layergrad.store.rows import example_row

    data = write_json(tmp_path / "d.json", DETAILED[:3])
    store = RunStore(tmp_path / "p")
    store.open({"schema_version": 2, "model": "x"})
    rows = [example_row(id="a", group="p", status="failed", reason="out of memory: does not fit alone (9 tokens)",
                        instruction=DETAILED[0]["instruction"], output="x", n_response_tokens=3),
            example_row(id="b", group="p", status="ok", instruction=DETAILED[1]["instruction"], output="y",
                        n_response_tokens=0),
            example_row(id="c", group="p", status="ok", instruction=DETAILED[2]["instruction"] + "\n" + DETAILED[2]["input"],
                        output="z", n_response_tokens=2)]
    store.write_part(rows, [])
    store.close()
    assert run(folder, data, tmp_path / "cut", "--truncate-to", str(tmp_path / "p")) == 0
    ex = load_results(tmp_path / "cut").examples.sort_values("index").reset_index(drop=True)
    assert list(ex["status"]) == ["skipped", "skipped", "ok"]
    assert "partner 'a'" in ex.loc[0, "reason"] and "is failed (out of memory" in ex.loc[0, "reason"]
    assert "partner 'b'" in ex.loc[1, "reason"] and "has 0 response tokens" in ex.loc[1, "reason"]
    assert ex.loc[2, "n_response_tokens"] == 2 and ex.loc[2, "truncate_partner"] == "c"


@pytest.mark.parametrize("args, fragment", [
    (["--truncate-response", "0"], "truncate_response (--truncate-response): must be an integer >= 1"),
    (["--truncate-response", "-2"], "must be an integer >= 1"),
    (["--truncate-response", "two"], "invalid int value: 'two'"),
    (["--truncate-to", "NOWHERE"], "--truncate-to NOWHERE: no such run directory"),
    (["--truncate-to", "."], "not a layergrad run directory"),
    (["--truncate-to", "OUT"], "is this run's own --out"),
    (["--truncate-response", "3", "--truncate-to", "NOWHERE"], "not both"),
], ids=["zero", "negative", "not-an-int", "missing-dir", "not-a-run", "itself", "both"])
def test_bad_values_exit_2_with_a_clear_message(tmp_path, folder, capsys, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    data = write_json(tmp_path / "d.json", DETAILED[:1])
    args = [a.replace("OUT", str(tmp_path / "o")) for a in args]
    assert run(folder, data, tmp_path / "o", *args) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "o" / "parts").exists()  # nothing written


def test_a_toml_value_that_is_no_integer_is_refused(tmp_path, capsys):
    conf = tmp_path / "run.toml"
    conf.write_text('truncate_response = "5"\n')
    assert main(["run", "--config", str(conf), "--data", "x.json", "--out", str(tmp_path / "o")]) == 2
    assert "truncate_response (in " in capsys.readouterr().err


@pytest.mark.parametrize("first, second, key", [
    ([], ["--truncate-response", "2"], "truncate_response"),
    (["--truncate-response", "2"], ["--truncate-response", "3"], "truncate_response"),
    (["--truncate-response", "2"], ["--truncate-to", "P"], "truncate_to"),
])
def test_resume_with_another_cut_is_refused(tmp_path, folder, capsys, first, second, key):
    from conftest import RECORDS as R

    data = write_json(tmp_path / "d.json", [dict(r) for r in R[:2]])
    partner = tmp_path / "p"
    assert run(folder, data, partner, "--modules", "q") == 0
    out = tmp_path / "o"
    assert run(folder, data, out, *[a.replace("P", str(partner)) for a in first]) == 0
    before = sorted(p.name for p in (out / "parts").iterdir())
    capsys.readouterr()
    assert run(folder, data, out, *[a.replace("P", str(partner)) for a in second]) == 2
    err = capsys.readouterr().err
    assert f"[{key}: stored " in err
    assert sorted(p.name for p in (out / "parts").iterdir()) == before


def test_an_old_store_without_the_length_columns_still_loads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from layergrad.store import RunStore

    store = RunStore(tmp_path / "old")
    store.open({"schema_version": 2, "model": "x"})
    store.close()
    from layergrad.store import schema

    new = {"n_response_tokens_full", "truncate_at", "truncate_partner"}
    old_schema = pa.schema([f for f in schema.EXAMPLES if f.name not in new])  # the examples table before them
    old = pa.Table.from_pylist([{"id": "a", "status": "ok", "order": 0, "n_response_tokens": 7}], schema=old_schema)
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "module": pa.array([], pa.string())}),
                   tmp_path / "old" / "parts" / "modules-r0-000000.parquet")
    pq.write_table(old, tmp_path / "old" / "parts" / "examples-r0-000000.parquet")
    ex = load_results(tmp_path / "old").examples
    assert ex.loc[0, "n_response_tokens_full"] == 7 and ex["truncate_at"].isna().all()
    assert json.loads((tmp_path / "old" / "manifest.json").read_text())["schema_version"] == 2


def test_cut_keeps_the_first_k_loss_terms_of_several_assistant_turns():
    """--turns all: the loss terms lie in several spans; the cut keeps the first k of them, in order."""
    from layergrad.inputs.prompting import Encoded
    from layergrad.run.truncate import cut

    enc = Encoded(input_ids=list(range(14)), n_prompt=3, n_response=6, truncated=False, text="", response_start=0,
                  spans=((3, 5), (8, 12)))
    assert enc.loss_targets() == [3, 4, 8, 9, 10, 11]
    for k, ids_kept, spans in [(1, 4, ((3, 4),)), (2, 5, ((3, 5),)), (3, 9, ((3, 5), (8, 9))), (6, 14, ((3, 5), (8, 12)))]:
        got = cut(enc, k)
        assert len(got.input_ids) == ids_kept and got.spans == spans and got.n_response == min(k, 6)
        assert got.loss_targets() == enc.loss_targets()[:k] and got.cut.full == 6 and got.cut.at == k
    assert cut(enc, 9).input_ids == enc.input_ids  # at most K: whole
