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
    assert '<section id="findings">' in overview and "long vs short" in overview and "Indicative only" in overview
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
    assert len(jobs) == 4 and not notes
    fs = load_config(REPO / "experiments" / "fast_slow.toml")
    assert len(fs["groups"]) == 36 and len(fs["comparisons"]) == 12
    if DATA.exists():
        jobs, notes = plan(fs, out=tmp_path)
        assert len(jobs) == 36 and not notes


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
    assert "[matrix]" in text and len(text.splitlines()) <= 40
