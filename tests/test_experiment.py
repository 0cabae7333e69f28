"""``layergrad experiment``: a study from a TOML file, resumable, with reports and an overview."""
from __future__ import annotations

import pytest

from conftest import save_model, write_json
from layergrad.cli import main
from layergrad.experiment import ExperimentError, expand_matrix, load_config, plan


def write_conf(tmp_path, folder, extra=""):
    conf = tmp_path / "exp.toml"
    conf.write_text(f'''
name = "tiny study"
out = "{tmp_path / 'out'}"
data_root = "data"
[run]
modules = "attn"
prompt_mode = "base"
progress = false
[[models]]
name = "tiny"
model = "{folder}"
[[groups]]
label = "short"
data = "short.json"
[[groups]]
label = "long"
data = "long.json"
[[groups]]
label = "absent"
data = "nope.json"
[[comparisons]]
title = "short vs long"
groups = ["short", "long"]
{extra}''')
    return conf


@pytest.fixture
def study(tmp_path, tokenizer):
    folder = save_model(tmp_path, "llama", tokenizer)
    (tmp_path / "data").mkdir()
    write_json(tmp_path / "data" / "short.json", [{"instruction": f"Q{i}", "output": "42"} for i in range(4)])
    write_json(tmp_path / "data" / "long.json", [{"instruction": f"Q{i}", "output": "Step 1: 3 + 4 = 7. The answer is 7."} for i in range(4)])
    return write_conf(tmp_path, folder)


def test_experiment_runs_groups_reports_and_resumes(tmp_path, study, capsys):
    assert main(["experiment", str(study)]) == 0
    out = tmp_path / "out"
    overview = (out / "index.html").read_text()
    assert "short vs long" in overview and "nope.json" in overview  # the absent group is noted, not fatal
    # the overview states every comparison's findings, numbers linked to the report's findings.csv
    assert '<section id="findings">' in overview and "long vs short" in overview
    from layergrad.analysis.verdicts import WORDS
    assert any(w[0].upper() + w[1:] + "." in overview for w in WORDS)  # each finding opens with its verdict
    assert 'href="reports/tiny/short-vs-long/findings.csv"' in overview and "paired on instruction" in overview
    assert (out / "reports" / "tiny" / "short-vs-long" / "index.html").exists()
    assert (out / "reports" / "tiny" / "short-vs-long" / "curves.csv").exists()
    capsys.readouterr()
    assert main(["experiment", str(study), "--no-reports"]) == 0
    assert capsys.readouterr().out.count("0 computed now") == 2  # every run resumed, nothing recomputed


def test_unknown_group_in_comparison_is_refused(tmp_path, study):
    study.write_text(study.read_text() + '\n[[comparisons]]\ntitle = "bad"\ngroups = ["shrot"]\n')
    with pytest.raises(ExperimentError, match="unknown group"):
        load_config(study)


def test_shipped_experiments_parse_and_name_existing_files(tmp_path):
    from conftest import DATA, REPO

    demo = load_config(REPO / "experiments" / "demo.toml")
    jobs, notes = plan(demo, out=tmp_path)
    assert len(jobs) == 5 and not notes
    cut = next(j for j in jobs if j.label == "Detailed CoT, cut to None CoT length")
    assert cut.cfg.truncate_to == str(tmp_path / "runs" / "smollm2-135m-instruct" / "none-cot")
    assert [j.label for j in jobs].index("None CoT") < [j.label for j in jobs].index(cut.label)
    assert demo["comparisons"][0]["groups"] == ["None CoT", "Detailed CoT, cut to None CoT length"]
    fs = load_config(REPO / "experiments" / "fast_slow.toml")
    assert len(fs["groups"]) == 42 and len(fs["comparisons"]) == 18
    first = fs["comparisons"][0]
    assert first["title"].startswith("aqua: fast vs slow thinking at equal length")
    assert first["groups"] == ["aqua / None CoT", "aqua / Detailed CoT, cut to None CoT length"]
    assert {g["label"]: g.get("truncate_to") for g in fs["groups"]}["gsm8k / Detailed CoT, cut to None CoT length"] == "gsm8k / None CoT"
    # the other comparisons are those of before (the truncated groups are chosen by name only)
    assert all("cut to" not in g for c in fs["comparisons"] if "equal length" not in c["title"] for g in c["groups"])
    if DATA.exists():
        jobs, notes = plan(fs, out=tmp_path)
        assert len(jobs) == 42 and not notes


def test_matrix_expands_to_groups_and_comparisons(tmp_path):
    groups, comps = expand_matrix({
        "data": "{correctness}/{task}_{style}.json", "label": "{task} / {style} / {correctness}",
        "task": ["t1", "t2"], "correctness": {"": "ok", "irrelevant": "bad"}, "style": {"None": "no", "Detailed": "long"},
        "comparisons": [{"title": "{task}: fast vs slow", "each": ["task"], "fix": {"correctness": ""}},
                        {"title": "{task}: correct vs irrelevant", "each": ["task"], "order": ["style", "correctness"]}],
    })
    assert groups[2]["axes"] == {"task": "t1", "correctness": "irrelevant", "style": "None"}  # read by [quality]
    groups = [{k: g[k] for k in ("label", "data")} for g in groups]
    assert groups[:4] == [{"label": "t1 / None", "data": "ok/t1_no.json"}, {"label": "t1 / Detailed", "data": "ok/t1_long.json"},
                          {"label": "t1 / None / irrelevant", "data": "bad/t1_no.json"},
                          {"label": "t1 / Detailed / irrelevant", "data": "bad/t1_long.json"}]
    assert len(groups) == 8
    assert comps == [
        {"title": "t1: fast vs slow", "groups": ["t1 / None", "t1 / Detailed"]},
        {"title": "t1: correct vs irrelevant", "groups": ["t1 / None", "t1 / None / irrelevant", "t1 / Detailed", "t1 / Detailed / irrelevant"]},
        {"title": "t2: fast vs slow", "groups": ["t2 / None", "t2 / Detailed"]},
        {"title": "t2: correct vs irrelevant", "groups": ["t2 / None", "t2 / None / irrelevant", "t2 / Detailed", "t2 / Detailed / irrelevant"]},
    ]
    with pytest.raises(ExperimentError, match="unknown axes"):
        expand_matrix({"data": "{task}.json", "task": ["a"], "comparisons": [{"title": "x", "each": ["tsak"]}]})
    with pytest.raises(ExperimentError, match="placeholder"):
        expand_matrix({"data": "{tsak}.json", "task": ["a"]})


def test_fast_slow_is_a_short_matrix():
    from conftest import REPO

    text = (REPO / "experiments" / "fast_slow.toml").read_text()
    assert "[matrix]" in text and len(text.splitlines()) <= 45  # 36 + 6 groups, 18 comparisons


def test_a_group_cut_to_another_groups_lengths_runs_after_it(tmp_path, study, capsys):
    """truncate_to names a label; the partner is run first (whatever the file order); the cut run records it."""
    from layergrad.store import load_results

    text = study.read_text().replace('[[groups]]\nlabel = "short"',
                                     '[[groups]]\nlabel = "long, cut to short length"\ndata = "long.json"\ntruncate_to = "short"\n'
                                     '[[groups]]\nlabel = "short"', 1)
    study.write_text(text + '\n[[comparisons]]\ntitle = "at equal length"\ngroups = ["short", "long, cut to short length"]\n')
    conf = load_config(study)
    assert [g["label"] for g in conf["groups"]][:2] == ["short", "long, cut to short length"]
    assert main(["experiment", str(study), "--no-reports"]) == 0
    runs = tmp_path / "out" / "runs" / "tiny"
    cut, short = load_results(runs / "long-cut-to-short-length"), load_results(runs / "short")
    assert cut.manifest["truncate_to"] == "../short" and cut.manifest["truncate_to_groups"] == ["short"]
    want = dict(zip(short.examples["instruction"], short.examples["n_response_tokens"]))
    got = dict(zip(cut.examples["instruction"], cut.examples["n_response_tokens"]))
    assert got == want and (cut.examples["n_response_tokens_full"] > cut.examples["n_response_tokens"]).all()


@pytest.mark.parametrize("group, fragment", [
    ('truncate_to = "shrot"', "truncate_to = 'shrot' is no group's label (did you mean 'short'?); groups are: "),
    ('truncate_to = "long"', "truncate_to names the group itself"),
    ('run = { truncate_to = "x" }', "truncate_to goes in the group itself"),
])
def test_a_bad_truncate_to_is_refused_naming_the_labels(tmp_path, study, group, fragment):
    study.write_text(study.read_text().replace('label = "long"\ndata = "long.json"', f'label = "long"\ndata = "long.json"\n{group}'))
    with pytest.raises(ExperimentError) as e:
        load_config(study)
    assert fragment in str(e.value)


def test_a_truncate_to_cycle_is_refused(tmp_path, study):
    text = study.read_text().replace('label = "long"\ndata = "long.json"', 'label = "long"\ndata = "long.json"\ntruncate_to = "short"')
    text = text.replace('label = "short"\ndata = "short.json"', 'label = "short"\ndata = "short.json"\ntruncate_to = "long"')
    study.write_text(text)
    with pytest.raises(ExperimentError, match="cycle: short -> long -> short"):
        load_config(study)


def test_matrix_truncated_groups_and_listed_fixes():
    groups, comps = expand_matrix({
        "data": "{correctness}/{task}_{style}.json", "label": "{task} / {style} / {correctness}",
        "task": ["t1", "t2"], "correctness": {"": "ok", "irrelevant": "bad"}, "style": {"None": "no", "Detailed": "long"},
        "truncated": [{"axis": "style", "from": "Detailed", "to": "None", "label": "Detailed cut", "fix": {"correctness": ""}}],
        "comparisons": [{"title": "{task}: equal length", "each": ["task"], "fix": {"correctness": "", "style": ["None", "Detailed cut"]}},
                        {"title": "{task}: fast vs slow", "each": ["task"], "fix": {"correctness": ""}}],
    })
    assert groups[8:] == [{"label": "t1 / Detailed cut", "data": "ok/t1_long.json", "truncate_to": "t1 / None",
                           "axes": {"task": "t1", "correctness": "", "style": "Detailed cut"}},
                          {"label": "t2 / Detailed cut", "data": "ok/t2_long.json", "truncate_to": "t2 / None",
                           "axes": {"task": "t2", "correctness": "", "style": "Detailed cut"}}]
    assert comps == [{"title": "t1: equal length", "groups": ["t1 / None", "t1 / Detailed cut"]},
                     {"title": "t1: fast vs slow", "groups": ["t1 / None", "t1 / Detailed"]},
                     {"title": "t2: equal length", "groups": ["t2 / None", "t2 / Detailed cut"]},
                     {"title": "t2: fast vs slow", "groups": ["t2 / None", "t2 / Detailed"]}]
    with pytest.raises(ExperimentError, match="to = 'Nnoe' is not a label of axis 'style'"):
        expand_matrix({"data": "{style}.json", "style": ["None", "Detailed"],
                       "truncated": [{"axis": "style", "from": "Detailed", "to": "Nnoe", "label": "x"}]})


def test_a_group_may_cut_every_response_after_k_tokens(tmp_path, study):
    study.write_text(study.read_text().replace('label = "long"\ndata = "long.json"', 'label = "long"\ndata = "long.json"\ntruncate_response = 3'))
    jobs, _ = plan(load_config(study), out=tmp_path / "o")
    assert {j.label: j.cfg.truncate_response for j in jobs} == {"short": None, "long": 3}
    study.write_text(study.read_text().replace("truncate_response = 3", 'truncate_response = "3"'))
    with pytest.raises(ExperimentError, match="truncate_response \\(in group 'long'\\): must be an integer >= 1"):
        plan(load_config(study), out=tmp_path / "o")
