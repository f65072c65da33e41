"""`srlm score`: predictions made elsewhere, in the official formats, scored with the official metrics."""

import json
from pathlib import Path

import pytest
from sklearn import metrics as skm

from srlm.cli import main as srlm_main
from srlm.data.tasks import get_task
from srlm.errors import SrlmError
from srlm.eval.score import score

SAMPLES = Path(__file__).resolve().parent / "data"
SQUAD2 = SAMPLES / "squad" / "dev-v2.0-sample.json"


def test_squad2_predictions_json(tmp_path):
    task = get_task("squad2")
    ex = task.load(data=str(SQUAD2))
    preds = {e.id: ("" if e.meta["is_impossible"] else e.meta["answers"][-1]) for e in ex}
    first_noans = next(e.id for e in ex if e.meta["is_impossible"])
    preds[first_noans] = "Newton"  # one wrong abstention
    f = tmp_path / "pred.json"
    f.write_text(json.dumps(preds, ensure_ascii=False), encoding="utf-8")
    m, recs = score(task, ex, f)
    assert m["HasAns_exact"] == 1.0 and m["NoAns_exact"] == pytest.approx(12 / 13)
    assert m["exact_match"] == pytest.approx(27 / 28) and m["missing"] == 0


def test_unknown_and_missing_ids(tmp_path):
    task = get_task("squad2")
    ex = task.load(data=str(SQUAD2))
    f = tmp_path / "pred.json"
    f.write_text(json.dumps({"nope": "x", ex[0].id: "force"}), encoding="utf-8")
    with pytest.raises(SrlmError, match="ids not in the data, e.g. nope"):
        score(task, ex, f)
    f.write_text(json.dumps({ex[0].id: "force"}), encoding="utf-8")
    with pytest.raises(SrlmError, match="no prediction for 27 of 28"):
        score(task, ex, f)
    m, _ = score(task, ex, f, allow_missing=True)
    assert m["missing"] == 27 and m["exact_match"] == pytest.approx(1 / 28)


def test_glue_submission_tsv_matches_sklearn(tmp_path):
    task = get_task("glue-mrpc")
    ex = task.load(data=str(SAMPLES / "glue"))
    gold = [e.meta["label"] for e in ex]
    pred = [g if i % 3 else 1 - g for i, g in enumerate(gold)]
    f = tmp_path / "MRPC.tsv"
    f.write_text("index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in enumerate(pred)), encoding="utf-8")
    m, _ = score(task, ex, f)
    assert m["f1"] == pytest.approx(skm.f1_score(gold, pred), abs=1e-9)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(gold, pred), abs=1e-9)
    # raw labels and label words are accepted too
    rte = get_task("glue-rte")
    rex = rte.load(data=str(SAMPLES / "glue"))
    f.write_text(
        "".join(f"{e.id}\t{'entailment' if i % 2 else 'False'}\n" for i, e in enumerate(rex)), encoding="utf-8"
    )
    m, _ = score(rte, rex, f)
    want = sum((e.answer == "True") == bool(i % 2) for i, e in enumerate(rex)) / len(rex)
    assert m["accuracy"] == pytest.approx(want)
    f.write_text("0\tperhaps\n", encoding="utf-8")
    with pytest.raises(SrlmError, match=r"MRPC.tsv:1: prediction 'perhaps'"):
        score(task, ex, f)


def test_glue_qqp_submission_matches_sklearn(tmp_path):
    task = get_task("glue-qqp")
    ex = task.load(data=str(SAMPLES / "glue"))
    gold = [e.meta["label"] for e in ex]
    pred = [1, 1, 1, 0, 1, 0, 1, 1]  # 2 of 4 positives found, 3 false positives
    f = tmp_path / "QQP.tsv"
    f.write_text("id\tlabel\n" + "".join(f"{e.id}\t{p}\n" for e, p in zip(ex, pred)), encoding="utf-8")
    m, _ = score(task, ex, f)  # ids are QQP's own `id` column
    assert m["f1"] == pytest.approx(skm.f1_score(gold, pred), abs=1e-9)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(gold, pred), abs=1e-9)
    assert 0 < m["f1"] < 1 and m["f1"] != m["accuracy"]


def test_gsm8k_outputs_by_position_and_by_id(tmp_path):
    task = get_task("gsm8k")
    ex = task.load(split="train", data=str(SAMPLES / "gsm8k"), limit=4)
    f = tmp_path / "out.jsonl"
    f.write_text("".join(json.dumps({"output": e.solution if i else "#### 0"}) + "\n" for i, e in enumerate(ex)))
    m, _ = score(task, ex, f)
    assert m["accuracy"] == 0.75 and m["exact_match,strict-match"] == 0.75
    f.write_text(
        "".join(json.dumps({"id": e.id, "completion": f"The answer is {e.answer}."}) + "\n" for e in reversed(ex))
    )
    assert score(task, ex, f)[0]["accuracy"] == 1.0
    f.write_text(json.dumps({"output": "1"}) + "\n" + "{bad json\n")
    with pytest.raises(SrlmError, match=r"out.jsonl:2"):
        score(task, ex, f)


def test_gsm8k_score_follows_the_prompt_the_outputs_were_made_with(tmp_path, capsys):
    data = SAMPLES / "gsm8k" / "train_sample.jsonl"
    ex = get_task("gsm8k").load(split="train", data=str(data), limit=4)
    f = tmp_path / "out.jsonl"
    f.write_text("".join(json.dumps({"id": e.id, "output": f"... The answer is {e.answer}."}) + "\n" for e in ex))
    got = {}
    for prompt in ("gsm8k", "gsm8k_cot"):
        out = tmp_path / f"{prompt}.json"
        argv = [
            "score",
            "--task",
            "gsm8k",
            "--split",
            "train",
            "--data",
            str(data),
            "--predictions",
            str(f),
            "--allow-missing",
            "--out",
            str(out),
        ] + (["--prompt", prompt] if prompt != "gsm8k" else [])
        assert srlm_main(argv) == 0
        got[prompt] = json.loads(out.read_text())
    n = got["gsm8k"]["metrics"]["n"]
    assert got["gsm8k"]["prompt"] == "gsm8k" and got["gsm8k_cot"]["prompt"] == "gsm8k_cot"
    assert got["gsm8k"]["metrics"]["exact_match,strict-match"] == 0.0  # lm-eval gsm8k's strict wants '#### N'
    assert got["gsm8k_cot"]["metrics"]["exact_match,strict-match"] == pytest.approx(4 / n)  # gsm8k_cot's wants this
    assert "strict-match, lm-eval's: the first match of 'The answer is" in capsys.readouterr().out


def test_score_command_line(tmp_path, capsys):
    ex = get_task("math500").load(data=str(SAMPLES / "math" / "math500_sample.jsonl"))
    f = tmp_path / "math.jsonl"
    f.write_text("".join(json.dumps({"id": e.id, "output": f"so \\boxed{{{e.answer}}}"}) + "\n" for e in ex))
    out = tmp_path / "m.json"
    rc = srlm_main(
        [
            "score",
            "--task",
            "math500",
            "--data",
            str(SAMPLES / "math" / "math500_sample.jsonl"),
            "--predictions",
            str(f),
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and json.loads(out.read_text())["metrics"]["accuracy"] == 1.0
    rc = srlm_main(["score", "--task", "nope", "--data", str(f), "--predictions", str(f)])
    assert rc == 1 and "unknown task 'nope'" in capsys.readouterr().err
