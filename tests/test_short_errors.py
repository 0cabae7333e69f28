"""Short errors: an unknown flag is one line with its did-you-mean and the way to --help; every problem of an
experiment file comes at once, before anything runs; every --help that takes data names every format."""
from __future__ import annotations

import pytest

from layergrad.cli import build_parser, main
from layergrad.inputs.data import SUFFIXES


def _exit(capsys, argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err


def test_an_unknown_flag_is_one_line_with_the_closest_and_help(capsys):
    code, err = _exit(capsys, ["run", "--data", "d.json", "--out", "o", "--modles", "attn"])
    assert code == 2
    assert err == "layergrad run: error: unknown flag --modles (did you mean --modules?); see layergrad run --help\n"


def test_a_bad_choice_and_a_missing_argument_are_one_line_too(capsys):
    code, err = _exit(capsys, ["run", "--prompt-mode", "chta"])
    assert code == 2 and err.count("\n") == 1 and "did you mean 'chat'?" in err and "see layergrad run --help" in err
    code, err = _exit(capsys, ["validate"])
    assert code == 2 and err.count("\n") == 1 and "see layergrad validate --help" in err and "usage:" not in err


def test_every_problem_of_an_experiment_file_at_once_before_anything_runs(tmp_path, capsys):
    conf = tmp_path / "exp.toml"
    conf.write_text('''
name = "typos"
out = "out"
[run]
modules = "atn"
batchsize = 4
[[models]]
model = "default"
[[groups]]
label = "a"
data = "a.json"
[[groups]]
labl = "b"
data = "b.json"
[report]
normalize = "mean"
''')
    assert main(["experiment", str(conf)]) == 2
    err = capsys.readouterr().err
    assert "5 problem(s) in the experiment file" in err, err
    assert "groups[1]: unknown key 'labl' (did you mean 'label'?)" in err
    assert "groups[1] needs a string 'label'" in err
    assert "'batchsize'" in err and "batch_size" in err  # the [run] key typo, named with the right key
    assert "modules" in err and "'atn'" in err  # the bad value
    assert "[report]" in err and "'normalize' (did you mean 'normalise'?)" in err
    assert not (tmp_path / "out").exists() and "Traceback" not in err


@pytest.mark.parametrize("command, dest", [("run", "data"), ("validate", "data"), ("experiment", "config")])
def test_every_help_that_takes_data_names_every_format(command, dest):
    sub = build_parser().commands[command]
    text = next(a.help for a in sub._actions if a.dest == dest)
    for suffix in SUFFIXES:
        assert suffix in text, (command, suffix)
    assert "folder of such files" in text and "save_to_disk" in text and "hub dataset id" in text
