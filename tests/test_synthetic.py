"""The built-in synthetic dataset: deterministic, paired across styles, arithmetically right."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from layergrad.inputs.data import load_examples
from layergrad.inputs.synthetic import STYLES, make_dataset, pair_key, write_dataset

N = 40  # five rounds of the eight templates


@pytest.fixture(scope="module")
def dataset():
    return make_dataset(N, seed=3)


# Independent solvers: parse the numbers out of the question text and compute the
# answer here, without the generator's own working.
SOLVERS = [
    (r"buys (\d+) \w+ at \$(\d+) each and pays with a \$(\d+) bill",
     lambda count, price, bill: bill - count * price),
    (r"travels at (\d+) km per hour for (\d+) hours, then at (\d+) km per hour for (\d+) hours",
     lambda v1, t1, v2, t2: v1 * t1 + v2 * t2),
    (r"has (\d+) boxes with (\d+) \w+ in each box and shares .* among (\d+) friends",
     lambda boxes, per, friends: boxes * per / friends),
    (r"is (\d+) years old\. \w+ is (\d+) times as old as \w+\. How old will \w+ be in (\d+) years",
     lambda age, times, years: age * times + years),
    (r"saves \$(\d+) every week for (\d+) weeks, then spends \$(\d+)",
     lambda weekly, weeks, spent: weekly * weeks - spent),
    (r"bakes (\d+) trays of (\d+) cookies\. After (\d+) cookies are eaten, .* bags of (\d+)\.",
     lambda trays, per, eaten, bag: (trays * per - eaten) / bag),
    (r"has (\d+) rows of (\d+) tulips and (\d+) rows of (\d+) roses",
     lambda r1, p1, r2, p2: r1 * p1 - r2 * p2),
    (r"A book has (\d+) pages\. \w+ reads (\d+) pages a day for (\d+) days",
     lambda pages, per_day, days: pages - per_day * days),
]


def solve(question: str) -> float:
    matches = [(pattern, f) for pattern, f in SOLVERS if re.search(pattern, question)]
    assert len(matches) == 1, f"expected exactly one template to match: {question}"
    pattern, f = matches[0]
    return f(*map(int, re.search(pattern, question).groups()))


EQUATION = re.compile(r"((?:\d+ [×÷+\-] )+\d+) = (\d+)")


def equations(text: str) -> list[tuple[str, int]]:
    return [(lhs, int(rhs)) for lhs, rhs in EQUATION.findall(text)]


def test_every_style_has_n_records_with_the_alpaca_fields(dataset):
    assert tuple(dataset) == STYLES
    for style, records in dataset.items():
        assert len(records) == N
        for r in records:
            assert set(r) == {"id", "instruction", "input", "output"}
            assert r["input"] == "" and r["output"].strip()
            assert r["id"].endswith("-" + style)


def test_same_seed_same_data_other_seed_other_data():
    assert make_dataset(12, seed=5) == make_dataset(12, seed=5)
    assert make_dataset(12, seed=5) != make_dataset(12, seed=6)
    # A longer dataset starts with the shorter one's problems.
    assert [r["instruction"] for r in make_dataset(20, 5)["detailed"][:12]] == \
        [r["instruction"] for r in make_dataset(12, 5)["detailed"]]


def test_styles_pair_up_by_id_stem_and_instruction(dataset):
    stems = [pair_key(r["id"]) for r in dataset["answer_only"]]
    assert stems == [f"arith-{i:04d}" for i in range(N)]
    for style in STYLES:
        assert [pair_key(r["id"]) for r in dataset[style]] == stems
        assert [r["instruction"] for r in dataset[style]] == \
            [r["instruction"] for r in dataset["answer_only"]]
    assert len({r["instruction"] for r in dataset["answer_only"]}) == N  # distinct problems


def test_every_template_is_used(dataset):
    used = {next(i for i, (p, _) in enumerate(SOLVERS) if re.search(p, r["instruction"]))
            for r in dataset["answer_only"]}
    assert used == set(range(len(SOLVERS)))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_answers_are_arithmetically_correct(seed):
    data = make_dataset(N, seed)
    for plain, short, detailed in zip(data["answer_only"], data["short_rationale"], data["detailed"]):
        expected = solve(plain["instruction"])
        assert expected == int(expected) and expected > 0, plain
        assert plain["output"] == str(int(expected))
        assert short["output"].endswith(f"The answer is {int(expected)}.")
        assert detailed["output"].endswith(f"The answer is {int(expected)}.")


@pytest.mark.parametrize("style", ["short_rationale", "detailed"])
def test_every_written_equation_holds(dataset, style):
    for r in dataset[style]:
        found = equations(r["output"])
        assert len(found) >= 2, r["output"]
        for lhs, rhs in found:
            assert eval(lhs.replace("×", "*").replace("÷", "/")) == rhs, (lhs, rhs, r["id"])


def test_short_rationale_is_one_or_two_sentences(dataset):
    for r in dataset["short_rationale"]:
        sentences = [s for s in re.split(r"(?<=\.)\s+", r["output"]) if s]
        assert 2 <= len(sentences) <= 3, r["output"]  # working (one or two) + the answer
        assert "\n" not in r["output"]


def test_detailed_has_numbered_steps_givens_and_a_check(dataset):
    shorts = {r["instruction"]: r["output"] for r in dataset["short_rationale"]}
    for r in dataset["detailed"]:
        out = r["output"]
        numbers = [int(m) for m in re.findall(r"^(\d+)\. ", out, flags=re.M)]
        assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 4
        assert "Given:" in out and "Check:" in out
        # The givens restate the question's numbers.
        givens = next(line for line in out.splitlines() if "Given:" in line).split("Given:")[1]
        assert set(re.findall(r"\d+", givens)) == set(re.findall(r"\d+", r["instruction"]))
        assert len(out.split()) <= 120
        assert len(out) > 2 * len(shorts[r["instruction"]])  # slow thinking is longer


@pytest.mark.parametrize("n, seed", [(N, 3), (200, 0), (200, 1)])  # 200: many equal answers
def test_irrelevant_borrows_another_problems_detailed_response(n, seed):
    dataset = make_dataset(n, seed)
    detailed = [r["output"] for r in dataset["detailed"]]
    answers = [r["output"] for r in dataset["answer_only"]]
    assert len(set(answers)) < n  # so the answer condition below is not trivially met
    borrowed = [r["output"] for r in dataset["irrelevant"]]
    for i, text in enumerate(borrowed):
        assert text in detailed and text != detailed[i]
        assert not text.endswith(f"The answer is {answers[i]}.")
    assert Counter(borrowed) == Counter(detailed)  # a permutation: every response used once


def test_small_n_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        make_dataset(1)
    assert len(make_dataset(2)["irrelevant"]) == 2


def test_write_dataset_writes_loadable_files(tmp_path):
    paths = write_dataset(tmp_path / "synthetic", n=8, seed=1)
    assert set(paths) == set(STYLES)
    assert json.loads(paths["detailed"].read_text(encoding="utf-8")) == make_dataset(8, 1)["detailed"]
    examples, problems = load_examples([paths[s] for s in STYLES])
    assert problems == [] and len(examples) == 4 * 8
    assert {e.group for e in examples} == set(STYLES)
    assert len({e.id for e in examples}) == 4 * 8  # ids unique across the styles
