"""Run options: one validation (RunConfig), every bad input a clear message and exit 2, flags that match the fields."""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from conftest import REPO, save_model, write_json
from layergrad import cli
from layergrad.cli import main
from layergrad.cli import run as cli_run
from layergrad.config import NO_FLAG, RunConfig
from layergrad.errors import ConfigError, LayergradError


@pytest.fixture
def data(tmp_path, records):
    return write_json(tmp_path / "d.json", records)


def _refused(capsys, argv, *fragments):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("layergrad") and "error:" in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


# ------------------------------------------------------------------ bad values: exit 2, message names the value

BAD_FLAGS = [
    ("shard not i/N", ["--shard", "foo"], ["shard", "'foo'", "i/N"]),
    ("shard i >= N", ["--shard", "3/2"], ["3/2", "0 <= i < N"]),
    ("spectrum-k not a number", ["--spectrum-k", "abc"], ["--spectrum-k", "'abc'", "'all'"]),
    ("batch size 0", ["--batch-size", "0"], ["batch_size (--batch-size)", "got 0"]),
    ("limit 0", ["--limit", "0"], ["limit (--limit)", "got 0"]),
    ("limit negative", ["--limit", "-4"], ["limit (--limit)", "got -4"]),
    ("max length 0", ["--max-length", "0"], ["max_length (--max-length)", "got 0"]),
    ("max batch tokens 0", ["--max-batch-tokens", "0"], ["max_batch_tokens", "got 0"]),
    ("dtype typo", ["--dtype", "bf61"], ["unknown dtype 'bf61'", "did you mean 'bf16'"]),
    ("device", ["--device", "gpu"], ["unknown device 'gpu'", "did you mean 'cuda'"]),
    ("device index", ["--device", "cuda:x"], ["unknown device 'cuda:x'"]),
    ("module typo fails before the model loads", ["--modules", "atn", "--model", "/no/such/model"],
     ["unknown role 'atn'", "did you mean 'attn'"]),
]


@pytest.mark.parametrize("name, args, fragments", BAD_FLAGS, ids=[c[0] for c in BAD_FLAGS])
def test_bad_flag_values_exit_2_naming_the_value(tmp_path, data, capsys, name, args, fragments):
    out = tmp_path / "o"
    _refused(capsys, ["run", "--data", str(data), "--out", str(out), "--no-progress", *args], *fragments)
    assert not out.exists()


def test_every_problem_is_reported_at_once(tmp_path, data, capsys):
    err = _refused(capsys, ["run", "--data", str(data), "--out", str(tmp_path / "o"), "--batch-size", "0",
                            "--limit", "0", "--shard", "2/2", "--spectrum-k", "x", "--dtype", "fp8"],
                   "5 problems", "batch_size", "limit", "shard", "--spectrum-k", "fp8")
    assert err.count("\n  - ") == 5


@pytest.mark.parametrize("missing, argv", [("--out", ["--data", "D"]), ("--data", ["--out", "O"])])
def test_missing_out_or_data_exits_2_naming_it(tmp_path, data, capsys, missing, argv):
    argv = [str(data) if a == "D" else str(tmp_path / "o") if a == "O" else a for a in argv]
    _refused(capsys, ["run", *argv], f"missing '{missing[2:]}' ({missing})")


def test_dropin_mode_without_save_path_exits_2(data, capsys):
    _refused(capsys, ["run", "--data_path", str(data)], "--data_path and --save_path")


def test_unknown_flag_suggests_the_closest(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--data", "d.json", "--out", "o", "--modlues", "attn"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--modlues" in err and "did you mean --modules?" in err and "Traceback" not in err


def test_unknown_choice_and_command_suggest_the_closest(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--data", "d.json", "--out", "o", "--prompt-mode", "chta"])
    assert "did you mean 'chat'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rn"])
    assert "did you mean 'run'?" in capsys.readouterr().err


# ------------------------------------------------------------------ run --config FILE


def test_config_key_typo_names_it_the_file_and_the_right_key(tmp_path, data, capsys):
    conf = tmp_path / "run.toml"
    conf.write_text(f'batchsize = 3\ndata = "{data.name}"\nout = "o"\n')
    _refused(capsys, ["run", "--config", str(conf)], "'batchsize'", str(conf), "did you mean 'batch_size'")


def test_config_invalid_toml_names_the_file_and_line(tmp_path, capsys):
    conf = tmp_path / "run.toml"
    conf.write_text('data = "d.json"\nmodules = attn\n')
    _refused(capsys, ["run", "--config", str(conf)], str(conf), "not valid TOML", "line 2")


def test_config_file_missing_is_a_clear_message(tmp_path, capsys):
    err = _refused(capsys, ["run", "--config", str(tmp_path / "nothere.toml")], "nothere.toml", "no such file")
    assert "Errno" not in err


def test_config_value_problem_names_the_file(tmp_path, data, capsys):
    conf = tmp_path / "run.toml"
    conf.write_text(f'data = "{data.name}"\nout = "o"\nlimit = 0\nbatch_size = "8"\n')
    _refused(capsys, ["run", "--config", str(conf)], f"limit (in {conf})", f"batch_size (in {conf})", "got '8'")


def _config_of(argv):
    a = cli.build_parser().parse_args(["run", *argv])
    return cli_run._run_config(a)[0]


def test_config_run_table_is_accepted_and_flags_override_it(tmp_path, data):
    conf = tmp_path / "run.toml"
    conf.write_text(f'[run]\ndata = "{data.name}"\nout = "o"\nbatch_size = 3\nmodules = "attn"\n')
    cfg = _config_of(["--config", str(conf), "--batch-size", "5"])
    assert (cfg.batch_size, cfg.modules, cfg.out) == (5, "attn", "o")


def test_config_data_paths_are_relative_to_the_file_flags_to_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    conf = tmp_path / "sub" / "run.toml"
    conf.write_text('data = ["d.json", "/abs/e.json"]\nout = "o"\n')
    monkeypatch.chdir(tmp_path)
    cfg = _config_of(["--config", "sub/run.toml"])
    assert cfg.data == [str(Path("sub") / "d.json"), "/abs/e.json"]
    assert cfg.out == "o"  # the run directory is where the command runs, as in `experiment`
    assert _config_of(["--config", "sub/run.toml", "--data", "x.json"]).data == ["x.json"]
    monkeypatch.chdir(tmp_path / "sub")  # a file in the current folder: paths exactly as written
    assert _config_of(["--config", "run.toml"]).data == ["d.json", "/abs/e.json"]


def test_a_config_file_run_is_the_same_run_as_the_flags(tmp_path, tokenizer, records, capsys, monkeypatch):
    from layergrad.store import load_results

    folder = save_model(tmp_path, "llama", tokenizer)
    (tmp_path / "study").mkdir()
    write_json(tmp_path / "study" / "d.json", records[:2])
    conf = tmp_path / "study" / "run.toml"
    conf.write_text(f'[run]\nmodel = "{folder}"\ndata = "d.json"\nmodules = "attn"\nprompt_mode = "base"\n')
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["run", "--config", str(conf), "--out", "a", "--no-progress"]) == 0
    assert main(["run", "--model", str(folder), "--data", "study/d.json", "--modules", "attn", "--prompt-mode", "base",
                 "--out", "b", "--no-progress"]) == 0
    a, b = load_results(tmp_path / "a"), load_results(tmp_path / "b")
    assert a.modules["nuclear"].tolist() == b.modules["nuclear"].tolist()
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "%|" not in err  # --no-progress: no bar, not even transformers'
    assert main(["run", "--config", str(conf), "--out", "c"]) == 0
    assert "Loading weights" in capsys.readouterr().err  # (which it prints by default)


def test_no_progress_restores_transformers_progress_bars(tmp_path, tokenizer):
    from transformers.utils import logging as hf_logging

    from layergrad.inputs.models import load_model

    folder = save_model(tmp_path, "llama", tokenizer)
    assert hf_logging.is_progress_bar_enabled()
    load_model(str(folder), progress=False)
    assert hf_logging.is_progress_bar_enabled()


def test_a_real_process_prints_no_traceback(tmp_path):
    conf = tmp_path / "run.toml"
    conf.write_text("modules = attn\n")
    p = subprocess.run([sys.executable, "-m", "layergrad", "run", "--config", str(conf)], capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2 and "Traceback" not in p.stderr and str(conf) in p.stderr and "line 1" in p.stderr


# ------------------------------------------------------------------ RunConfig from Python


def test_runconfig_validates_in_python_too(tmp_path):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"data": "d.json", "out": "o", "batchsize": 3, "method": "gramm", "ifd": "cheery"})
    msg = str(e.value)
    assert "did you mean 'batch_size'" in msg and "did you mean 'gram'" in msg and "did you mean 'cherry'" in msg
    assert isinstance(e.value, LayergradError) and isinstance(e.value, ValueError)
    with pytest.raises(ConfigError, match="stats_dtype"):
        RunConfig(data=["d.json"], out="o", stats_dtype="float16").validate()


@pytest.mark.parametrize("ifd", [False, True, None, "cherry", "superfiltering"])
def test_ifd_accepts_a_bool_none_or_a_method_name(ifd):
    RunConfig(data=["d.json"], out="o", ifd=ifd).validate()


def test_good_values_are_kept_as_given():
    cfg = RunConfig.from_dict({"data": "d.json", "out": "o", "dtype": "BF16", "stats_dtype": "fp64", "device": "cuda:1",
                               "spectrum_k": None, "shard": "1/4", "fields": {"output": "answer"}})
    assert (cfg.dtype, cfg.stats_dtype, cfg.device, cfg.spectrum_k, cfg.shard) == ("BF16", "fp64", "cuda:1", None, "1/4")
    assert cfg.data == ["d.json"]


def test_experiment_reports_every_config_typo_at_once(tmp_path, capsys):
    (tmp_path / "d.json").write_text('[{"instruction": "a", "output": "b"}]')
    conf = tmp_path / "exp.toml"
    conf.write_text('name = "x"\n[run]\nbatchsize = 2\nlimt = 3\n[[models]]\nmodel = "default"\nbatch_size = 0\n'
                    '[[groups]]\nlabel = "a"\ndata = "d.json"\n[[groups]]\nlabel = "b"\ndata = "d.json"\n')
    err = _refused(capsys, ["experiment", str(conf)], "3 problem(s)", "'batchsize' in [run]", "did you mean 'batch_size'",
                   "'limt'", "did you mean 'limit'", "batch_size (in [[models]] 'default')")
    assert err.count("batchsize") == 1  # once, not once per run


# ------------------------------------------------------------------ flags <-> fields


def _run_parser():
    return cli.build_parser().commands["run"]


def test_every_runconfig_field_has_a_run_flag_or_a_documented_reason():
    dests = {a.dest for a in _run_parser()._actions}
    names = {f.name for f in fields(RunConfig)}
    assert not (names - dests - set(NO_FLAG)), "fields without a flag: add one, or a reason in config.NO_FLAG"
    assert set(NO_FLAG) <= names
    assert set(cli_run._PLAIN_FLAGS) <= names and set(cli_run._PLAIN_FLAGS) <= dests


def test_help_texts_state_the_fields_defaults():
    checked = 0
    for action in _run_parser()._actions:
        m = re.search(r"\(default ([^);]+)", action.help or "")
        if not m or action.dest not in {f.name for f in fields(RunConfig)}:
            continue
        default = RunConfig.field_default(action.dest)
        assert m.group(1) == ("all" if default is None and action.dest == "spectrum_k" else str(default)), action.dest
        checked += 1
    assert checked >= 8


def test_every_argument_of_modules_validate_export_import_has_help():
    commands = cli.build_parser().commands
    for name in ("run", "modules", "validate", "export", "import"):
        p = commands[name]
        assert p.description, name
        for action in p._actions:
            if action.dest in ("help",) or action.help == "==SUPPRESS==":
                continue
            assert action.help, (name, action.dest)


def test_requires_python_allows_tomllib():
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'requires-python = ">=3\.(1[1-9])', text)
