"""Benchmark loaders on the real-format samples, answer extraction and MATH equivalence."""

import json
from pathlib import Path

import pytest

from srlm.data.gsm8k import extract_flexible, extract_strict
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


def test_gsm8k_strict_and_flexible_extraction():
    assert extract_strict("so $1,000.\n#### 1,000") == "1000"
    assert extract_strict("The answer is $18.") == "18"
    assert extract_strict("I think 12 then 13") is None
    assert extract_flexible("I think 12 then $1,300.") == "1300"
    t = get_task("gsm8k")
    ex = t.load(split="train", data=str(SAMPLES / "gsm8k"), limit=1)[0]
    recs = [{"output": "48 + 24 = 72", "gold": "72", "correct": True},        # flexible only
            {"output": "#### 72 and then 5", "gold": "72", "correct": True},  # strict only
            {"output": "nothing", "gold": "72", "correct": False}]
    m = t.metrics(recs)
    assert m["exact_match_strict"] == pytest.approx(1 / 3) and m["exact_match_flexible"] == pytest.approx(1 / 3)
    assert t.is_correct("72.00", ex) and not t.is_correct("7.2", ex) and not t.is_correct(None, ex)


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


@pytest.mark.parametrize("a,b", [
    (r"\dfrac{9}{7}", r"\frac97"), ("0.5", r"\frac{1}{2}"), ("1/2", r"\frac{1}{2}"), (r"x \in [-2,7]", "[-2, 7]"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\pi/2)"), (r"90^\circ", "90"), ("42 inches", "42"),
    (r"\text{Evelyn}", "Evelyn"), (r"3\sqrt{13}", r"\sqrt{117}"), ("p - q", "-q+p"), ("4,6,14,15", "4, 6, 14, 15"),
    ("1,000", "1000"), (r"\$18.90", "18.9"), (r"10\%", "10"), ("x=5", "5"), (r"-\frac{1}{8}", "-0.125"),
    (r"\frac{x+2}{7}", r"\frac{x}{7}+\frac{2}{7}"), ("2^{10}", "1024"), ("187.5", r"\frac{375}{2}"), ("5.", "5"),
])
def test_math_equivalent(a, b):
    assert is_equiv(a, b) and is_equiv(b, a)


@pytest.mark.parametrize("a,b", [
    ("[-2,7)", "[-2,7]"), ("(3, 1.5708)", r"(3,\frac{\pi}{2})"), (r"\text{Evelyn}", "Bob"), ("q-p", "p - q"),
    ("4,6,14,15", "4,6,14"), (r"\pi", "3.14159"), ("E", "e"), ("__import__('os').getcwd()", "1"),
    ("2^{99999}", "1"), (None, "1"), ("", "1"),
])
def test_math_not_equivalent(a, b):
    assert not is_equiv(a, b)


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
    assert set(found) == {"glue-cola", "glue-sst2", "glue-mrpc", "glue-qqp", "glue-stsb", "glue-mnli", "glue-qnli",
                          "glue-rte", "glue-wnli"}
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
    cols = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "label2", "label3", "label4",
            "label5", "gold_label"]
    rows = [["0", "1", "1n", "gov", "(", "(", "(", "(", "P one.", "H one.", "neutral", "x", "x", "x", "x", "neutral"],
            ["1", "2", "2e", "gov", "(", "(", "(", "(", "P two.", "H two.", "entailment", "x", "x", "x", "x",
             "entailment"]]
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
