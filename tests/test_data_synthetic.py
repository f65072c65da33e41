import re
import time

import pytest

from srlm.data.synthetic import (
    FAMILIES,
    calc_steps,
    check_countdown,
    corpus_lines,
    countdown_value,
    extract_expression,
    extract_number,
    generate_problems,
    load_jsonl,
    numbers_equal,
    save_jsonl,
    split_of,
)
from srlm.data.tasks import get_task, task_names
from srlm.errors import SrlmError

TASKS = {"gsm": "synth-gsm", "countdown": "synth-countdown", "arith": "synth-arith"}


def _apply(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


# --- generation: determinism, splits, difficulty -------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_problems_and_prefix(family):
    a = generate_problems(family, 60, seed=3)
    b = generate_problems(family, 60, seed=3)
    assert [(e.prompt, e.solution, e.answer) for e in a] == [(e.prompt, e.solution, e.answer) for e in b]
    assert [e.prompt for e in generate_problems(family, 20, seed=3)] == [e.prompt for e in a[:20]]
    c = generate_problems(family, 60, seed=4)
    assert [e.prompt for e in a] != [e.prompt for e in c]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_train_and_test_never_overlap(family, seed):
    train = generate_problems(family, 1500, seed=seed, split="train")
    # a test draw with another seed and size must still be disjoint from train
    for test_seed, n in [(seed, 200), (seed + 100, 500)]:
        test = generate_problems(family, n, seed=test_seed, split="test")
        assert not {e.prompt for e in train} & {e.prompt for e in test}
        assert all(split_of(family, e.prompt) == "test" for e in test)
    assert all(split_of(family, e.prompt) == "train" for e in train)


def test_split_of_is_a_fixed_hash_bucket():
    prompts = [e.prompt for e in generate_problems("gsm", 2000, seed=0, split="train")]
    assert all(split_of("gsm", p) == "train" for p in prompts)
    # the bucket comes from the text, not the draw: a fresh set of raw texts splits ~10% test
    share = sum(split_of("gsm", f"problem {i}") == "test" for i in range(5000)) / 5000
    assert 0.07 < share < 0.13


@pytest.mark.parametrize("family", FAMILIES)
def test_difficulties_cycle_and_hold_out(family):
    task = get_task(TASKS[family], seed=1, difficulties=[1, 2], test_difficulties=[3])
    train = task.load("train", limit=40)
    test = task.load("test", limit=12)
    assert [e.meta["difficulty"] for e in train[:4]] == [1, 2, 1, 2]
    assert {e.meta["difficulty"] for e in train} == {1, 2}
    assert {e.meta["difficulty"] for e in test} == {3}
    assert len(train) == 40 and len(test) == 12


def test_gsm_difficulty_is_number_of_operations_and_values_in_range():
    for ex in generate_problems("gsm", 400, seed=5, difficulties=[1, 2, 3, 4, 5], max_number=20, max_value=300):
        steps = ex.meta["reasoning"].splitlines()
        assert len(steps) == ex.meta["difficulty"]
        values = {}
        for sent in re.findall(r"(\w+) has (\d+) \w+\.", ex.prompt):
            values[sent[0]] = int(sent[1])
            assert 2 <= int(sent[1]) <= 20
        for line in steps:
            # e.g. "Cid = 2 * Bob = 2 * 10 = 20." or "Eve = Ann + Bob = 3 + 8 = 11."
            m = re.fullmatch(r"(\w+) = (\w+) ([-+*]) (\w+) = (\d+) ([-+*]) (\d+) = (\d+)\.", line)
            assert m, line
            name, x, op, y, xv, op2, yv, v = m.groups()
            assert op == op2
            for sym, val in ((x, xv), (y, yv)):  # operands named in the trace carry their known values
                if not sym.isdigit():
                    assert values[sym] == int(val), (line, ex.prompt)
            assert _apply(int(xv), op, int(yv)) == int(v)
            assert 1 <= int(v) < 300
            values[name] = int(v)
        q = re.search(r"How many \w+ does (\w+) have\?$", ex.prompt).group(1)
        assert str(values[q]) == ex.answer


def test_gsm_distractors_and_options():
    for shuffle in (False, True):
        noisy = generate_problems("gsm", 30, seed=2, difficulties=[2], distractors=3, shuffle=shuffle)
        for ex in noisy:  # exactly 3 people whom the solution never needs
            subjects = re.findall(r"(?:^|\. )(\w+) has", ex.prompt)
            assert len(subjects) == len(set(subjects))
            assert sum(s not in ex.meta["reasoning"] for s in subjects) == 3
    assert all(len(e.meta["reasoning"].splitlines()) == 2 for e in noisy)
    only_add = generate_problems("gsm", 50, seed=2, ops="+", two_operand=False)
    assert all(" - " not in e.solution and " * " not in e.solution for e in only_add)
    with pytest.raises(SrlmError, match="unknown option"):
        generate_problems("gsm", 1, colour="red")
    with pytest.raises(SrlmError, match="ops"):
        generate_problems("gsm", 1, ops="/")
    with pytest.raises(SrlmError):
        generate_problems("gsm", 1, split="validation")
    with pytest.raises(SrlmError, match="max_factor"):
        generate_problems("gsm", 1, max_factor=1)
    with pytest.raises(SrlmError, match="names"):
        generate_problems("gsm", 1, difficulties=[12])


def test_countdown_reference_solution_and_difficulty():
    for ex in generate_problems("countdown", 300, seed=0, difficulties=[1, 2, 3, 4]):
        m = ex.meta
        assert len(m["numbers"]) == m["difficulty"] + 1
        assert len(m["reasoning"].splitlines()) == m["difficulty"]
        assert countdown_value(ex.answer, m["numbers"]) == m["target"]
        assert m["target"] not in m["numbers"]


_COLUMN = re.compile(r"(\d+) ([-+*]) (\d) ([-+]) (\d) = (\d+), digit (\d), (carry|borrow) (\d+)\.")
_RESULT = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.")


def _check_scratchpad(lines):
    """Every column line and every 'a op b = r.' line in a scratchpad is arithmetically right."""
    checked = 0
    for line in lines:
        if m := _COLUMN.fullmatch(line):
            x, o, y, o2, c, s, dig, kind, out = m.groups()
            assert _apply(_apply(int(x), o, int(y)), o2, int(c)) == int(s), line
            assert int(s) % 10 == int(dig), line
            if kind == "carry":
                assert int(s) // 10 == int(out), line
            else:  # a borrowing column is written with its 10 added
                assert int(x) >= 10 if out == "1" else int(x) < 10, line
            checked += 1
        elif m := _RESULT.fullmatch(line):
            a, o, b, r = m.groups()
            assert _apply(int(a), o, int(b)) == int(r), line
            checked += 1
    return checked


def test_scratchpads_are_right_for_random_operands():
    import random

    rng = random.Random(0)
    for _ in range(300):
        a, b = rng.randint(0, 10 ** rng.randint(1, 5)), rng.randint(0, 10 ** rng.randint(1, 4))
        for op in "+-*":
            x, y = (max(a, b), min(a, b)) if op == "-" else (a, b)
            lines = calc_steps(x, op, y)
            assert _check_scratchpad(lines) == len([s for s in lines if not s.endswith(":")])
            last = re.fullmatch(r"(\d+) [-+*] (\d+) = (\d+)\.", lines[-1]).groups()
            assert {int(last[0]), int(last[1])} == {x, y} and int(last[2]) == _apply(x, op, y)


def test_arith_answer_and_scratchpad():
    for ex in generate_problems("arith", 200, seed=0, difficulties=[1, 2, 3, 4], ops="+-*"):
        a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", ex.prompt).groups()
        assert len(a) == len(b) == ex.meta["difficulty"]
        assert int(ex.answer) == _apply(int(a), op, int(b)) >= 0
        assert _check_scratchpad(ex.meta["reasoning"].splitlines()) > 0


def test_gsm_scratchpad_option():
    for ex in generate_problems("gsm", 100, seed=0, difficulties=[1, 2, 3, 4], scratchpad=True):
        lines = ex.meta["reasoning"].splitlines()
        named = [s for s in lines if re.fullmatch(r"[A-Z][a-z]+ = \d+\.", s)]
        assert len(named) == ex.meta["difficulty"]
        assert named[-1] == f"{named[-1].split()[0]} = {ex.answer}."
        assert _check_scratchpad(lines) >= ex.meta["difficulty"]


@pytest.mark.parametrize("family", FAMILIES)
def test_solution_layout_and_solver_answer_verifies(family):
    task = get_task(TASKS[family], seed=0)
    for ex in task.load("test", limit=40):
        assert ex.solution == f"{ex.meta['reasoning']}\n{ex.meta['final']}"
        assert ex.meta["final"] == f"The answer is {ex.answer}."
        assert not re.search(r"\d,\d", ex.prompt + ex.solution)  # numbers written plainly
        chat = f"<think>{ex.meta['reasoning']}</think> {ex.meta['final']}"
        assert task.is_correct(task.extract(ex.solution), ex)
        assert task.is_correct(task.extract(chat), ex)
        assert not task.is_correct(task.extract("The answer is 100000."), ex)


def test_generation_is_fast():
    t = time.perf_counter()
    assert len(generate_problems("gsm", 10000, seed=0)) == 10000
    assert time.perf_counter() - t < 5  # ~0.5 s on an idle core; the machine is shared


# --- verifiers ----------------------------------------------------------------------------


def test_numbers_equal_accepts_equivalent_forms():
    for p in ["42", "42.0", " 42. ", "$42", "42.000"]:
        assert numbers_equal(p, "42"), p
    for p in ["1,000", "1000", "1000.0", "$1,000"]:
        assert numbers_equal(p, "1000"), p
    for p in ["41", "4,2", "1,00", "forty-two", "", None, "42 apples", "4 2"]:
        assert not numbers_equal(p, "42"), p


def test_extract_number_order_of_preference():
    assert extract_number("Bob = 3 + 4 = 7.\nThe answer is 7.") == "7"
    assert extract_number("<think>The answer is 5. x = 9</think> The answer is 12.") == "12"
    assert extract_number("<think>The answer is 5.</think> so 13 it is") == "13"  # after </think> wins
    assert extract_number("The answer is 3. Wait. The answer is 1,000.") == "1,000"
    assert extract_number("The answer is 42. Then 7 more words 9") == "42"
    assert extract_number("no answer line, just 3 and then 8.") == "8"  # flexible fallback
    assert extract_number("The answer is 2.5.") == "2.5"
    assert extract_number("The answer is 7, since 3 + 4 = 7.") == "7"
    assert extract_number("nothing here") is None


def test_countdown_checker_accepts_any_valid_expression():
    nums = [2, 3, 7, 25]
    assert check_countdown("25 - 3 - 2", nums, 20)
    assert check_countdown("(7 - 2) * (25 - 3) - 3 * 0 + 0", [0, 0, 2, 3, 3, 7, 25], 110)
    assert check_countdown("7 × 3 + 2", nums, 23)
    assert check_countdown("25 + 7 - 2 = 30", nums, 30)
    assert check_countdown("(25 + 3) / 2", nums, 14)
    assert check_countdown("2 - 3 + 25", nums, 24)  # negative intermediates are allowed
    assert check_countdown("3 * 3", [3, 3, 5], 9)  # a number given twice may be used twice


@pytest.mark.parametrize(
    "expr",
    [
        "3 * 3",  # reuse of a number given once
        "25 + 4",  # unknown number
        "25 / 2 * 2",  # non-exact division
        "7 / (3 - 3)",  # division by zero (and reuse)
        "__import__('os')",  # code
        "__import__('os').system('echo hi')",
        "2 ** 3",  # power
        "-2 + 3",  # unary minus
        "+7",  # unary plus
        "7 if 1 else 2",
        "x + 7",
        "(" * 300 + "7" + ")" * 300,  # too long / too deep
        "7.0",
        "",
    ],
)
def test_countdown_checker_rejects(expr):
    assert countdown_value(expr, [2, 3, 7, 25]) is None
    assert not check_countdown(expr, [2, 3, 7, 25], 9)


def test_countdown_checker_wrong_target_and_ops():
    assert not check_countdown("25 - 3", [2, 3, 7, 25], 21)
    assert check_countdown("25 / 5", [5, 25], 5)
    assert not check_countdown("25 / 5", [5, 25], 5, ops="+-*")
    assert countdown_value("3 * 3", [3, 7]) is None


def test_extract_expression():
    assert extract_expression("7 - 3 = 4.\nThe answer is (7 - 3) * 4.") == "(7 - 3) * 4"
    assert extract_expression("<think>3 + 4 = 7.</think> 3 + 4") == "3 + 4"
    assert extract_expression("<think>The answer is 9.</think> The answer is 3 × 4.") == "3 * 4"
    assert extract_expression("just words") is None


# --- task API -----------------------------------------------------------------------------


def test_tasks_registered_and_metrics_per_difficulty():
    assert {"synth-gsm", "synth-countdown", "synth-arith"} <= set(task_names())
    task = get_task("synth-gsm", seed=0, difficulties=[1, 2])
    exs = task.load("test", limit=6)
    records = [{"id": e.id, "correct": e.meta["difficulty"] == 1} for e in exs]  # found by id
    m = task.metrics(records)
    assert m["accuracy"] == pytest.approx(0.5) and m["n"] == 6
    assert m["accuracy@d1"] == 1.0 and m["accuracy@d2"] == 0.0 and m["n@d1"] == 3
    other = get_task("synth-gsm")
    m2 = other.metrics(
        [
            {"correct": True, "meta": {"difficulty": 4}},
            {"correct": False, "difficulty": 4},
            {"correct": True, "example": exs[0]},
        ]
    )
    assert m2["accuracy@d4"] == 0.5 and m2["accuracy@d1"] == 1.0


def test_task_defaults_and_bad_options():
    task = get_task("synth-gsm", n_train=30, n_test=8)
    assert len(task.load("train")) == 30 and len(task.load("test")) == 8
    with pytest.raises(SrlmError, match="difficulties"):
        get_task("synth-arith", difficulties=[0])
    with pytest.raises(SrlmError, match="unknown option"):
        get_task("synth-countdown", max_factor=3)


def test_jsonl_roundtrip_and_bad_file(tmp_path):
    exs = generate_problems("countdown", 5, seed=0)
    path = tmp_path / "cd.jsonl"
    save_jsonl(exs, path)
    task = get_task("synth-countdown")
    loaded = task.load("test", data=str(path), limit=3)
    assert [e.prompt for e in loaded] == [e.prompt for e in exs[:3]]
    assert task.is_correct(task.extract(loaded[0].solution), loaded[0])
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(SrlmError, match="bad.jsonl:1"):
        load_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(SrlmError, match="no such file"):
        load_jsonl(tmp_path / "missing.jsonl")


def test_corpus_lines():
    lines = list(corpus_lines(4, seed=0))
    assert len(lines) == 12
    assert all("The answer is" in s and "<think>" not in s for s in lines)
    assert lines == list(corpus_lines(4, seed=0))
    long = list(corpus_lines(4, seed=0, families=["gsm"], gsm={"scratchpad": True}))
    assert len(long) == 4 and all(re.search(r"^[A-Z][a-z]+ = \d+\.$", s, re.M) for s in long)


def test_saved_jsonl_is_written_whole_or_not_at_all(tmp_path):
    """A run reuses heldout.jsonl / kd_data.jsonl when it exists, so a failure mid-write must leave the
    previous file (or none), never a truncated one."""
    from srlm.data.synthetic import generate_problems, load_jsonl, save_jsonl

    path = tmp_path / "heldout.jsonl"
    first = generate_problems("gsm", 5, difficulties=[1])
    save_jsonl(first, path)

    def broken():
        yield from generate_problems("gsm", 3, difficulties=[2])
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        save_jsonl(broken(), path)
    assert [e.id for e in load_jsonl(path)] == [e.id for e in first]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heldout.jsonl"]  # no temporary left behind
