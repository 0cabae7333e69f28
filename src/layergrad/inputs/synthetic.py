"""The built-in fast/slow-thinking dataset: arithmetic word problems, made by code.

Every problem is answered in four styles, from fast to slow thinking, plus a control:

- ``answer_only``: just the number ("42");
- ``short_rationale``: one or two sentences of working, then "The answer is 42.";
- ``detailed``: numbered steps (the given quantities, each operation, a check),
  then "The answer is 42.";
- ``irrelevant``: the detailed response of a *different* problem (a fixed
  derangement, chosen so that the borrowed answer is never this problem's answer).

The same problem has the same id stem in every style: problem 7 is
``arith-0007-answer_only``, ``arith-0007-detailed``, ... so ids stay unique when the
styles are loaded together, and :func:`pair_key` recovers ``arith-0007`` to pair them.
Everything is drawn from ``random.Random(seed)``: the same ``(n, seed)`` gives the
same dataset on every machine and Python version.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["STYLES", "make_dataset", "pair_key", "write_dataset"]

STYLES = ("answer_only", "short_rationale", "detailed", "irrelevant")

_NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonah",
          "Kemi", "Liam", "Maya", "Nikhil", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara")
_ITEMS = (("notebook", "notebooks"), ("pen", "pens"), ("mug", "mugs"), ("ticket", "tickets"),
          ("plant", "plants"), ("book", "books"))
_VEHICLES = ("train", "bus", "car", "ferry", "truck")
_THINGS = ("bike", "jacket", "game", "lamp", "backpack")
_FRUIT = ("apples", "oranges", "pears", "plums", "lemons")


@dataclass(frozen=True)
class Step:
    """One operation: ``what`` (a singular noun phrase) is ``expr`` = ``value``;
    ``how`` says in words what the operation does."""

    what: str
    how: str
    expr: str
    value: int

    def sentence(self) -> str:
        return f"{self.what} is {self.expr} = {self.value}"


@dataclass(frozen=True)
class WordProblem:
    """A problem with its worked solution; the last step's value is the answer."""

    question: str
    givens: tuple[str, ...]  # the given quantities, restated
    steps: tuple[Step, ...]
    check: str  # an equation that confirms the answer

    @property
    def answer(self) -> int:
        return self.steps[-1].value


# ----------------------------------------------------------------------------- templates
# Each template draws its numbers from ``rng`` and returns a WordProblem whose answer is
# a positive integer. Operators are written ×, ÷, + and -.


def _shopping(rng: random.Random) -> WordProblem:
    name = rng.choice(_NAMES)
    one, many = rng.choice(_ITEMS)
    count, price = rng.randint(2, 9), rng.randint(2, 12)
    cost = count * price
    bill = next(b for b in (20, 50, 100, 200) if b > cost)
    change = bill - cost
    return WordProblem(
        f"{name} buys {count} {many} at ${price} each and pays with a ${bill} bill. "
        f"How many dollars of change does {name} get?",
        (f"{count} {many}", f"${price} per {one}", f"a ${bill} bill"),
        (Step(f"the cost of the {many}", f"multiply the number of {many} by the price of one",
              f"{count} × {price}", cost),
         Step("the change", "subtract the cost from the bill", f"{bill} - {cost}", change)),
        f"{cost} + {change} = {bill}, the amount paid",
    )


def _travel(rng: random.Random) -> WordProblem:
    vehicle = rng.choice(_VEHICLES)
    v1, t1 = rng.randint(3, 12) * 5, rng.randint(2, 5)
    v2, t2 = rng.randint(3, 12) * 5, rng.randint(1, 4)
    d1, d2 = v1 * t1, v2 * t2
    total = d1 + d2
    return WordProblem(
        f"A {vehicle} travels at {v1} km per hour for {t1} hours, then at {v2} km per hour "
        f"for {t2} hours. How many kilometres does it travel in total?",
        (f"{v1} km per hour for {t1} hours", f"{v2} km per hour for {t2} hours"),
        (Step("the first distance", "multiply the first speed by its time", f"{v1} × {t1}", d1),
         Step("the second distance", "multiply the second speed by its time", f"{v2} × {t2}", d2),
         Step("the total distance", "add the two distances", f"{d1} + {d2}", total)),
        f"{total} - {d2} = {d1}, the first distance",
    )


def _sharing(rng: random.Random) -> WordProblem:
    name = rng.choice(_NAMES)
    fruit = rng.choice(_FRUIT)
    friends, share = rng.randint(2, 6), rng.randint(3, 12)
    total = friends * share
    per_box = rng.choice([d for d in range(2, 13) if total % d == 0 and d != total])
    boxes = total // per_box
    return WordProblem(
        f"{name} has {boxes} boxes with {per_box} {fruit} in each box and shares all the "
        f"{fruit} equally among {friends} friends. How many {fruit} does each friend get?",
        (f"{boxes} boxes", f"{per_box} {fruit} per box", f"{friends} friends"),
        (Step(f"the number of {fruit}", f"multiply the boxes by the {fruit} in each box",
              f"{boxes} × {per_box}", total),
         Step("each friend's share", f"divide the {fruit} by the number of friends",
              f"{total} ÷ {friends}", share)),
        f"{share} × {friends} = {total}, all the {fruit}",
    )


def _ages(rng: random.Random) -> WordProblem:
    young, old = rng.sample(_NAMES, 2)
    age, times, years = rng.randint(3, 12), rng.randint(2, 5), rng.randint(2, 15)
    now = age * times
    later = now + years
    return WordProblem(
        f"{young} is {age} years old. {old} is {times} times as old as {young}. "
        f"How old will {old} be in {years} years?",
        (f"{young} is {age}", f"{old} is {times} times as old", f"{years} years from now"),
        (Step(f"{old}'s age now", f"multiply {young}'s age by {times}", f"{age} × {times}", now),
         Step(f"{old}'s age in {years} years", f"add {years} years to that age",
              f"{now} + {years}", later)),
        f"{later} - {years} = {now}, and {now} ÷ {times} = {age}, {young}'s age",
    )


def _savings(rng: random.Random) -> WordProblem:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    weekly, weeks = rng.randint(3, 15), rng.randint(4, 12)
    saved = weekly * weeks
    spent = rng.randint(1, saved - 1)
    left = saved - spent
    return WordProblem(
        f"{name} saves ${weekly} every week for {weeks} weeks, then spends ${spent} on a "
        f"{thing}. How many dollars does {name} have left?",
        (f"${weekly} per week", f"{weeks} weeks", f"${spent} spent"),
        (Step("the amount saved", "multiply the weekly savings by the number of weeks",
              f"{weekly} × {weeks}", saved),
         Step("the amount left", f"subtract the price of the {thing}", f"{saved} - {spent}", left)),
        f"{left} + {spent} = {saved}, the amount saved",
    )


def _baking(rng: random.Random) -> WordProblem:
    name = rng.choice(_NAMES)
    trays, per_tray, bag = rng.randint(2, 6), rng.randint(6, 12), rng.randint(2, 5)
    baked = trays * per_tray
    bags = rng.randint(1, (baked - 1) // bag)
    packed = bags * bag
    eaten = baked - packed
    return WordProblem(
        f"{name} bakes {trays} trays of {per_tray} cookies. After {eaten} cookies are eaten, "
        f"the rest are packed in bags of {bag}. How many bags are filled?",
        (f"{trays} trays", f"{per_tray} cookies per tray", f"{eaten} eaten", f"{bag} per bag"),
        (Step("the number of cookies baked", "multiply the trays by the cookies on each tray",
              f"{trays} × {per_tray}", baked),
         Step("the number of cookies left", "subtract the cookies eaten", f"{baked} - {eaten}", packed),
         Step("the number of bags", "divide the cookies left by the bag size",
              f"{packed} ÷ {bag}", bags)),
        f"{bags} × {bag} + {eaten} = {baked}, the number of cookies baked",
    )


def _garden(rng: random.Random) -> WordProblem:
    rows1, per1 = rng.randint(4, 12), rng.randint(5, 15)
    tulips = rows1 * per1
    rows2 = rng.randint(2, rows1)
    per2 = rng.randint(2, (tulips - 1) // rows2)
    roses = rows2 * per2  # at most tulips - 1: rows2 <= rows1 and per2 <= (tulips - 1) // rows2
    more = tulips - roses
    return WordProblem(
        f"A garden has {rows1} rows of {per1} tulips and {rows2} rows of {per2} roses. "
        f"How many more tulips than roses are there?",
        (f"{rows1} rows of {per1} tulips", f"{rows2} rows of {per2} roses"),
        (Step("the number of tulips", "multiply the tulip rows by the tulips in a row",
              f"{rows1} × {per1}", tulips),
         Step("the number of roses", "multiply the rose rows by the roses in a row",
              f"{rows2} × {per2}", roses),
         Step("the difference", "subtract the roses from the tulips", f"{tulips} - {roses}", more)),
        f"{roses} + {more} = {tulips}, the number of tulips",
    )


def _reading(rng: random.Random) -> WordProblem:
    name = rng.choice(_NAMES)
    per_day, days = rng.randint(8, 30), rng.randint(3, 9)
    read = per_day * days
    pages = read + rng.randint(10, 200)
    left = pages - read
    return WordProblem(
        f"A book has {pages} pages. {name} reads {per_day} pages a day for {days} days. "
        f"How many pages are left to read?",
        (f"{pages} pages in the book", f"{per_day} pages a day", f"{days} days"),
        (Step("the number of pages read", "multiply the pages a day by the number of days",
              f"{per_day} × {days}", read),
         Step("the number of pages left", "subtract the pages read from the book's length",
              f"{pages} - {read}", left)),
        f"{read} + {left} = {pages}, the whole book",
    )


TEMPLATES = (_shopping, _travel, _sharing, _ages, _savings, _baking, _garden, _reading)


# ----------------------------------------------------------------------------- responses


def _answer_only(p: WordProblem) -> str:
    return str(p.answer)


def _short_rationale(p: WordProblem) -> str:
    *first, last = p.steps
    working = ", ".join(s.sentence() for s in first)
    text = f"{working[0].upper()}{working[1:]}, so {last.sentence()}."
    return f"{text} The answer is {p.answer}."


def _detailed(p: WordProblem) -> str:
    lines = ["Let's solve this step by step.", f"1. Given: {'; '.join(p.givens)}."]
    for k, s in enumerate(p.steps, start=2):
        lines.append(f"{k}. To find {s.what}, {s.how}: {s.expr} = {s.value}.")
    lines.append(f"{len(p.steps) + 2}. Check: {p.check}.")
    lines.append(f"The answer is {p.answer}.")
    return "\n".join(lines)


def _derangement(answers: list[int], rng: random.Random) -> list[int]:
    """A permutation ``d`` with ``d[i] != i`` and, where possible, ``answers[d[i]] != answers[i]``.

    Sattolo's algorithm gives a random single cycle (so no fixed point); then any
    position that borrowed an equal answer swaps its target with one that fits both.
    """
    n = len(answers)
    d = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        d[i], d[j] = d[j], d[i]

    def fits(i: int, target: int) -> bool:
        return target != i and answers[target] != answers[i]

    for i in range(n):
        if fits(i, d[i]):
            continue
        for j in range(n):
            if fits(i, d[j]) and fits(j, d[i]):
                d[i], d[j] = d[j], d[i]
                break
    return d


def pair_key(record_id: str) -> str:
    """The problem a synthetic id belongs to: ``"arith-0007-detailed"`` -> ``"arith-0007"``."""
    for style in STYLES:
        if record_id.endswith("-" + style):
            return record_id[: -len(style) - 1]
    return record_id


def make_dataset(n: int = 24, seed: int = 0) -> dict[str, list[dict]]:
    """``n`` distinct problems in every style: style -> Alpaca records, in problem order.

    Records are ``{"id", "instruction", "input": "", "output"}``; templates take
    turns, so every kind of problem is present once ``n >= 8``.
    """
    if n < 2:
        raise ValueError(f"n must be at least 2 (the irrelevant style borrows another "
                         f"problem's response), got {n}")
    rng = random.Random(seed)
    problems: list[WordProblem] = []
    questions: set[str] = set()
    draws = 0
    while len(problems) < n:  # distinct questions; the templates allow far more than needed
        draws += 1
        if draws > 100 * n:
            raise ValueError(f"could not draw {n} distinct problems; use a smaller n")
        problem = TEMPLATES[len(problems) % len(TEMPLATES)](rng)
        if problem.question not in questions:
            questions.add(problem.question)
            problems.append(problem)
    detailed = [_detailed(p) for p in problems]
    borrowed = _derangement([p.answer for p in problems], rng)
    outputs = {
        "answer_only": [_answer_only(p) for p in problems],
        "short_rationale": [_short_rationale(p) for p in problems],
        "detailed": detailed,
        "irrelevant": [detailed[j] for j in borrowed],
    }
    width = max(4, len(str(n - 1)))
    return {
        style: [{"id": f"arith-{i:0{width}d}-{style}", "instruction": p.question, "input": "",
                 "output": outputs[style][i]} for i, p in enumerate(problems)]
        for style in STYLES
    }


def write_dataset(folder, n: int = 24, seed: int = 0) -> dict[str, Path]:
    """Write ``<folder>/<style>.json`` for every style; style -> path written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for style, records in make_dataset(n, seed).items():
        path = folder / f"{style}.json"
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        paths[style] = path
    return paths
