"""Benchmark loaders on the real-format samples, answer extraction and MATH equivalence."""

import json
import re
from pathlib import Path

import pytest

from srlm.data.gsm8k import INVALID, exact_match, extract_lenient, flexible_extract, strict_match
from srlm.data.math import is_equiv, last_boxed, normalize
from srlm.data.tasks import get_task
from srlm.errors import SrlmError

SAMPLES = Path(__file__).resolve().parent / "data"


# ---- GSM8K


def test_gsm8k_loads_official_jsonl():
    t = get_task("gsm8k")
    ex = t.load(split="train", data=str(SAMPLES / "gsm8k"))
    assert len(ex) == 30 and ex[0].answer == "72"
    assert "<<" not in ex[0].solution and ex[0].solution.endswith("#### 72")
    assert all(t.is_correct(t.extract(e.solution), e) for e in ex)
    assert len(t.load(split="train", data=str(SAMPLES / "gsm8k"), limit=3)) == 3


def test_gsm8k_lm_eval_filters_and_srlm_lenient_reading():
    assert strict_match("so $1,000.\n#### 1,000") == "1,000" and exact_match("1,000", "steps\n#### 1000")
    assert strict_match("The answer is $18.") == INVALID and strict_match("The answer is 18.", "gsm8k_cot") == "18"
    assert strict_match("\\boxed{7} then \\boxed{18}", "chat-boxed") == "18"
    assert flexible_extract("I think 12 then $1,300.") == "$1,300." and exact_match("$1,300.", "1300")
    assert not exact_match("5.00", "#### 5") and flexible_extract("nothing") == INVALID
    assert extract_lenient("The answer is $18.") == "18" and extract_lenient("I think 12 then $1,300.") == "1300"
    assert extract_lenient("so \\boxed{42} and 7") == "42" and extract_lenient("I think 12 then 13") == "13"
    t = get_task("gsm8k")
    ex = t.load(split="train", data=str(SAMPLES / "gsm8k"), limit=1)[0]
    recs = [
        {"output": "48 + 24 = 72", "gold": "72", "correct": True},  # flexible only
        {"output": "#### 72 and then 5", "gold": "72", "correct": True},  # strict only
        {"output": "nothing", "gold": "72", "correct": False},
    ]  # no meta: the gold is the reference
    m = t.metrics(recs)
    assert m["exact_match,strict-match"] == pytest.approx(1 / 3)
    assert m["exact_match,flexible-extract"] == pytest.approx(1 / 3) and m["accuracy"] == pytest.approx(2 / 3)
    assert t.is_correct("72.00", ex) and not t.is_correct("7.2", ex) and not t.is_correct(None, ex)
    assert ex.meta["answer"].endswith("#### 72") and "<<" in ex.meta["answer"]  # the record's answer, verbatim


def test_gsm8k_malformed_line_names_file_and_line(tmp_path):
    f = tmp_path / "test.jsonl"
    f.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q", "answer": \n', encoding="utf-8")
    with pytest.raises(SrlmError, match=r"test.jsonl:2"):
        get_task("gsm8k").load(data=str(f))
    f.write_text('{"question": "q", "answer": "no marker"}\n', encoding="utf-8")
    with pytest.raises(SrlmError, match=r"test.jsonl:1.*####"):
        get_task("gsm8k").load(data=str(f))


# ---- MATH


def test_last_boxed_nested_braces():
    assert last_boxed(r"so \boxed{1} then $\boxed{\frac{1}{\sqrt{2}}}$.") == r"\frac{1}{\sqrt{2}}"
    assert last_boxed(r"\boxed 5$") == "5"
    assert last_boxed("no box") is None


@pytest.mark.parametrize(
    "a,b",
    [
        (r"\dfrac{9}{7}", r"\frac97"),
        ("0.5", r"\frac{1}{2}"),
        ("1/2", r"\frac{1}{2}"),
        (r"x \in [-2,7]", "[-2, 7]"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\pi/2)"),
        (r"90^\circ", "90"),
        ("42 inches", "42"),
        (r"\text{Evelyn}", "Evelyn"),
        (r"3\sqrt{13}", r"\sqrt{117}"),
        ("p - q", "-q+p"),
        ("4,6,14,15", "4, 6, 14, 15"),
        ("1,000", "1000"),
        (r"\$18.90", "18.9"),
        (r"10\%", "10"),
        ("x=5", "5"),
        (r"-\frac{1}{8}", "-0.125"),
        (r"\frac{x+2}{7}", r"\frac{x}{7}+\frac{2}{7}"),
        ("2^{10}", "1024"),
        ("187.5", r"\frac{375}{2}"),
        ("5.", "5"),
        # factorised polynomials in any order
        ("(x+1)(x-1)", "(x-1)(x+1)"),
        ("(x-2)(x+3)", "(x+3)(x-2)"),
        ("(2a+b)(a-b)", "(a-b)(2a+b)"),
        # mixed numbers
        (r"2\frac{1}{2}", r"\frac{5}{2}"),
        (r"1\frac{1}{4}", "1.25"),
        (r"3\frac{2}{3}", r"\frac{11}{3}"),
        # fractions in all spellings
        (r"\dfrac{1}{2}", "1/2"),
        (r"\tfrac12", "0.5"),
        (r"\frac{1}{2}", r"\frac12"),
        (r"\dfrac{3}{4}", "0.75"),
        ("-1/2", r"-\frac{1}{2}"),
        (r"\frac{-1}{2}", r"-\tfrac12"),
        (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}"),
        # unordered solution sets, intervals and unions
        (r"\{1,2\}", r"\{2,1\}"),
        (r"\{-2, 3\}", r"\{3,-2\}"),
        ("2, -2", "-2, 2"),
        (r"\pm 2", "2, -2"),
        ("[-2,7)", "[-2, 7)"),
        (r"(-\infty, 3]", r"(-\infty,3]"),
        (r"\left[ 1, 2 \right)", "[1,2)"),
        (r"(-\infty,-2) \cup (-2, \infty)", r"(-\infty,-2)\cup(-2,\infty)"),
        # degrees, units, percentages
        (r"30^\circ", "30"),
        (r"90^{\circ}", "90"),
        ("90°", "90"),
        (r"5\text{ cm}", "5"),
        (r"8\text{ inches}", "8"),
        (r"16\text{ square units}", "16"),
        (r"5\sqrt{2}\text{ cm}", r"5\sqrt2"),
        ("5,000 dollars", "5000"),
        (r"10,\!000", "10000"),
        (r"45\%", "45"),
        (r"12.5\%", r"12.5"),
        # matrices and vectors
        (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
        (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}"),
        (r"\begin{pmatrix} 1/2 \\ -3 \end{pmatrix}", r"\begin{pmatrix} \frac12 \\ -3 \end{pmatrix}"),
        # \text{} answers
        (r"\text{(C)}", "C"),
        (r"\textbf{Sunday}", r"\text{Sunday}"),
        (r"\text{even}", "even"),
        (r"\mbox{odd}", "odd"),
        # ordered pairs and tuples
        ("(2, 3)", r"\left(2,3\right)"),
        (r"(1, \frac{1}{2})", "(1, 0.5)"),
        (r"(-1, 2, \sqrt{3})", r"(-1,2,\sqrt3)"),
    ],
)
def test_math_equivalent(a, b):
    assert is_equiv(a, b) and is_equiv(b, a)


@pytest.mark.parametrize(
    "a,b",
    [
        ("[-2,7)", "[-2,7]"),
        ("(3, 1.5708)", r"(3,\frac{\pi}{2})"),
        (r"\text{Evelyn}", "Bob"),
        ("q-p", "p - q"),
        ("4,6,14,15", "4,6,14"),
        (r"\pi", "3.14159"),
        ("__import__('os').getcwd()", "1"),
        ("2^{99999}", "1"),
        (None, "1"),
        ("", "1"),
        ("(x+1)(x-1)", "(x+1)(x+1)"),
        (r"2\frac{1}{2}", "1"),
        (r"2\frac{1}{2}", r"\frac{2}{2}"),
        (r"\frac{1}{2}", "2"),
        (r"\{1,2\}", r"\{1,2,3\}"),
        ("(1,2]", "(1,2)"),
        (r"(-\infty, 3]", r"(-\infty, 3)"),
        (r"30^\circ", "60"),
        (r"5\text{ cm}", "6"),
        (r"10\%", "20"),
        (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}2\\1\end{pmatrix}"),
        (r"\text{B}", "C"),
        (r"\text{Evelyn}", r"\text{Nevely}"),
        ("(1,2)", "(2,1)"),
        ("(2,3,4)", "(2,4,3)"),
        ("(1, 2)", "(1, 2, 3)"),
    ],
)
def test_math_not_equivalent(a, b):
    assert not is_equiv(a, b) and not is_equiv(b, a)


def test_math_equivalence_never_evaluates_text_and_keeps_its_time_limit(monkeypatch):
    import time

    import math_verify.parser as mvp
    import sympy.parsing.sympy_parser as sp

    # sympy's parse_expr runs eval on its input: it may only ever see number literals the LaTeX
    # grammar has already lexed (latex2sympy2 builds sympy.Number from them), never an answer's text
    seen, original = [], sp.parse_expr

    def spy(text, *a, **k):
        seen.append(text)
        return original(text, *a, **k)

    for mod in (sp, mvp):
        monkeypatch.setattr(mod, "parse_expr", spy)
    assert is_equiv("1/2", "0.5") and is_equiv("2x + 1", "1 + 2x")
    for a, b in [("__import__('os').getcwd()", "1"), ("(lambda: 1)()", "1"), ("Symbol('x')", "x")]:
        assert not is_equiv(a, b)
    assert seen and all(re.fullmatch(r"[0-9]+(\.[0-9]*)?", t) for t in seen), seen
    t0 = time.perf_counter()
    assert not is_equiv("9^{9^{9}}", "1", timeout=0.5)  # sympy would work on this for minutes
    assert time.perf_counter() - t0 < 3


def test_math_samples_gold_and_verifier():
    t = get_task("math")
    ex = t.load(data=str(SAMPLES / "math" / "test_sample.jsonl"))
    assert len(ex) == 20 and ex[2].answer == r"\dfrac{9}{7}" and normalize(ex[2].answer) == r"\frac{9}{7}"
    assert all(t.is_correct(t.extract(e.solution), e) for e in ex)
    assert t.extract("The final answer is $\\frac{9}{7}$. I hope it is correct.") == r"\frac{9}{7}"
    assert t.is_correct(t.extract("The final answer is $\\frac{9}{7}$. I hope it is correct."), ex[2])
    m5 = get_task("math500").load(data=str(SAMPLES / "math" / "math500_sample.jsonl"))
    assert len(m5) == 12 and m5[0].id == "test/precalculus/807.json"
    assert m5[0].answer == r"\left( 3, \frac{\pi}{2} \right)"


def test_math500_answer_must_match_boxed(tmp_path):
    line = json.loads((SAMPLES / "math" / "math500_sample.jsonl").read_text(encoding="utf-8").splitlines()[0])
    line["answer"] = "7"
    f = tmp_path / "test.jsonl"
    f.write_text(json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(SrlmError, match=r"test.jsonl:1.*answer"):
        get_task("math500").load(data=str(f))


# ---- GLUE


def test_glue_loads_every_sample_layout():
    from srlm.data.glue import available_glue_tasks

    root = str(SAMPLES / "glue")
    found = available_glue_tasks(root)
    assert set(found) == {
        "glue-cola",
        "glue-sst2",
        "glue-mrpc",
        "glue-qqp",
        "glue-stsb",
        "glue-mnli",
        "glue-qnli",
        "glue-rte",
        "glue-wnli",
    }
    cola = get_task("glue-cola").load(data=root)
    assert len(cola) == 41 and cola[0].answer == "yes" and cola[0].prompt.startswith("The sailors rode")  # no header
    mrpc = get_task("glue-mrpc").load(data=root)  # byte-order mark before the header
    assert len(mrpc) == 40 and mrpc[0].answer == "yes" and mrpc[1].answer == "no"
    assert mrpc[0].prompt.startswith("Sentence 1: He said the foodservice pie")
    assert '"The foodservice pie' in mrpc[0].prompt  # unbalanced quote kept, not parsed as CSV
    stsb = get_task("glue-stsb").load(data=root)
    assert stsb[0].answer == "5.0" and stsb[1].meta["score"] == 4.75
    mnli = get_task("glue-mnli").load(data=root)
    assert len(mnli) == 40 and mnli[0].answer == "Neither" and mnli[0].choices == ["True", "Neither", "False"]
    rte = get_task("glue-rte").load(data=str(SAMPLES / "glue" / "RTE" / "train.tsv"))
    assert rte[0].answer == "False" and rte[0].id == "0"
    assert get_task("glue-wnli").load(data=root)[1].answer == "True"
    qqp = get_task("glue-qqp").load(data=root)  # official layout: id qid1 qid2 question1 question2 is_duplicate
    assert len(qqp) == 8 and [e.answer for e in qqp[:3]] == ["no", "no", "yes"]
    assert qqp[0].id == "201359" and qqp[0].prompt.startswith("Question 1: Why are African-Americans so beautiful?")
    assert "\u201cde facto\u201d" in qqp[5].prompt and '"GATE"' in qqp[4].prompt  # quotes kept, not parsed as CSV


def test_glue_mnli_official_16_column_tsv(tmp_path):
    cols = [
        "index",
        "promptID",
        "pairID",
        "genre",
        "sentence1_binary_parse",
        "sentence2_binary_parse",
        "sentence1_parse",
        "sentence2_parse",
        "sentence1",
        "sentence2",
        "label1",
        "label2",
        "label3",
        "label4",
        "label5",
        "gold_label",
    ]
    rows = [
        ["0", "1", "1n", "gov", "(", "(", "(", "(", "P one.", "H one.", "neutral", "x", "x", "x", "x", "neutral"],
        ["1", "2", "2e", "gov", "(", "(", "(", "(", "P two.", "H two.", "entailment", "x", "x", "x", "x", "entailment"],
    ]
    d = tmp_path / "MNLI"
    d.mkdir()
    (d / "dev_mismatched.tsv").write_text("\n".join("\t".join(r) for r in [cols] + rows) + "\n", encoding="utf-8")
    ex = get_task("glue-mnli-mm").load(data=str(tmp_path))
    assert [e.answer for e in ex] == ["Neither", "True"] and ex[0].prompt.startswith("P one.\nQuestion: H one.")
    with pytest.raises(SrlmError, match="dev_matched"):  # the matched file is absent
        get_task("glue-mnli").load(data=str(tmp_path))
    (d / "dev_mismatched.tsv").write_text("\t".join(cols) + "\n" + "\t".join(rows[0][:10]) + "\n", encoding="utf-8")
    with pytest.raises(SrlmError, match=r"dev_mismatched.tsv:2: 10 tab-separated fields, expected 16"):
        get_task("glue-mnli-mm").load(data=str(tmp_path))


def test_glue_errors_and_generation_extract(tmp_path):
    f = tmp_path / "dev.tsv"
    f.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", encoding="utf-8")
    with pytest.raises(SrlmError, match=r"dev.tsv:2: label 'maybe'"):
        get_task("glue-rte").load(data=str(f))
    with pytest.raises(SrlmError, match="no labels"):
        get_task("glue-rte").load(split="test", data=str(f))
    t = get_task("glue-mnli")
    assert t.extract(" Neither, I think. True?") == "Neither" and t.extract("no idea") is None
    assert get_task("glue-stsb").extract(" 3.5 out of 5") == "3.5"


# ---- SQuAD


def test_squad_loads_v1_and_v2():
    v1 = get_task("squad").load(data=str(SAMPLES / "squad" / "dev-v1.1-sample.json"))
    assert len(v1) == 15 and v1[0].meta["answers"][2] == "the concept of force"
    v2 = get_task("squad2").load(data=str(SAMPLES / "squad"))
    assert len(v2) == 28 and sum(e.meta["is_impossible"] for e in v2) == 13
    assert all(e.answer == "" for e in v2 if e.meta["is_impossible"])
    t2 = get_task("squad2")
    assert t2.extract(" Unanswerable.\nmore") == "" and t2.extract("Sir Isaac Newton\n") == "Sir Isaac Newton"
    with pytest.raises(SrlmError, match="version v2.0; use task squad2"):
        get_task("squad").load(data=str(SAMPLES / "squad" / "dev-v2.0-sample.json"))


def test_unknown_task_suggests_name():
    with pytest.raises(SrlmError, match="Did you mean 'gsm8k'"):
        get_task("gsm8kk")
