"""Metrics against scikit-learn, scipy and the official SQuAD scripts (re-typed below as references)."""

import json
import math
import re
import string
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from srlm.eval import metrics as M

SAMPLES = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize("seed", range(6))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    k = 2 if seed % 2 == 0 else 3
    t = rng.integers(0, k, n)
    p = np.where(rng.random(n) < 0.7, t, rng.integers(-1, k, n))  # -1: an invalid prediction
    assert M.accuracy(t, p) == pytest.approx(skm.accuracy_score(t, p), abs=1e-12)
    assert M.matthews_corrcoef(t, p) == pytest.approx(skm.matthews_corrcoef(t, p), abs=1e-9)
    assert M.f1_binary(t, p, positive=1) == pytest.approx(
        skm.f1_score(t, p, labels=[1], average="micro", zero_division=0), abs=1e-9
    )


def test_degenerate_classification_cases():
    assert M.matthews_corrcoef([1, 1, 1], [1, 1, 1]) == skm.matthews_corrcoef([1, 1, 1], [1, 1, 1]) == 0.0
    assert M.matthews_corrcoef([0, 1], [1, 0]) == pytest.approx(-1.0)
    assert M.f1_binary([0, 0], [0, 0]) == 0.0  # no positives anywhere: sklearn's zero_division=0
    assert M.f1_binary([1, 0, 1], [1, 1, 0]) == pytest.approx(skm.f1_score([1, 0, 1], [1, 1, 0]))


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 40).astype(float)  # many ties
    y = x + rng.integers(-2, 3, 40) * 0.5  # ties in y too
    assert M.pearson(x, y) == pytest.approx(sps.pearsonr(x, y)[0], abs=1e-9)
    assert M.spearman(x, y) == pytest.approx(sps.spearmanr(x, y)[0], abs=1e-9)
    np.testing.assert_allclose(M.rankdata(x), sps.rankdata(x))


def test_correlations_on_real_stsb_scores():
    rows = (SAMPLES / "glue" / "STS-B" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    gold = np.array([float(r.split("\t")[-1]) for r in rows])
    pred = np.round(gold * 0.7 + np.sin(np.arange(gold.size)), 0)  # rounded: ties
    assert M.pearson(gold, pred) == pytest.approx(sps.pearsonr(gold, pred)[0], abs=1e-9)
    assert M.spearman(gold, pred) == pytest.approx(sps.spearmanr(gold, pred)[0], abs=1e-9)
    assert math.isnan(M.pearson(gold, np.ones_like(gold)))  # constant: undefined, as scipy


def test_pass_at_k_matches_enumeration():
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                draws = list(combinations([1] * c + [0] * (n - c), k))
                want = sum(any(d) for d in draws) / len(draws)
                assert M.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)
    assert M.pass_at_k(200, 1, 1) == pytest.approx(1 / 200)
    big = M.pass_at_k(10_000, 37, 100)  # stable where comb() would be astronomically large
    assert big == pytest.approx(1 - math.comb(10_000 - 37, 100) / math.comb(10_000, 100), abs=1e-12)
    with pytest.raises(ValueError):
        M.pass_at_k(3, 4, 1)


def test_majority_vote_ties_go_to_first_seen():
    assert M.majority_vote(["3", "5", "5", "3"]) == "3"
    assert M.majority_vote(["5", "3", "3", "5", "3"]) == "3"
    assert M.majority_vote([None, "7", None]) == "7"
    assert M.majority_vote([None, None]) is None
    assert M.majority_vote(["5.0", "5", "4"], key=lambda a: float(a)) == "5.0"


def test_glue_score_averages_within_tasks_and_mnli():
    res = {
        "glue-cola": {"mcc": 0.4, "accuracy": 0.9},
        "glue-mrpc": {"f1": 0.8, "accuracy": 0.6},
        "glue-stsb": {"pearson": 0.5, "spearman": 0.7},
        "glue-mnli": {"accuracy": 0.8},
        "glue-mnli-mm": {"accuracy": 0.6},
        "gsm8k": {"accuracy": 1.0},
    }
    g = M.glue_score(res)
    assert g["tasks"] == 4
    assert g["glue-mrpc_score"] == pytest.approx(0.7)
    assert g["glue-mnli_score"] == pytest.approx(0.7)
    assert g["score"] == pytest.approx((0.4 + 0.7 + 0.6 + 0.7) / 4)
    assert M.glue_score({"gsm8k": {"accuracy": 1.0}}) == {}


# ---- the official SQuAD evaluation scripts, re-typed as references -------------------------


def _off_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _off_v1(dataset, predictions):
    def f1_score(prediction, ground_truth):
        p, g = _off_normalize(prediction).split(), _off_normalize(ground_truth).split()
        common = Counter(p) & Counter(g)
        num_same = sum(common.values())
        if num_same == 0:
            return 0
        precision, recall = 1.0 * num_same / len(p), 1.0 * num_same / len(g)
        return (2 * precision * recall) / (precision + recall)

    f1 = em = total = 0
    for article in dataset:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                total += 1
                gts = [a["text"] for a in qa["answers"]]
                pred = predictions[qa["id"]]
                em += max(_off_normalize(pred) == _off_normalize(g) for g in gts)
                f1 += max(f1_score(pred, g) for g in gts)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def _off_v2(dataset, preds):
    def get_tokens(s):
        return _off_normalize(s).split() if s else []

    def compute_f1(a_gold, a_pred):
        gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
        common = Counter(gold_toks) & Counter(pred_toks)
        num_same = sum(common.values())
        if len(gold_toks) == 0 or len(pred_toks) == 0:
            return int(gold_toks == pred_toks)
        if num_same == 0:
            return 0
        precision, recall = 1.0 * num_same / len(pred_toks), 1.0 * num_same / len(gold_toks)
        return (2 * precision * recall) / (precision + recall)

    exact, f1, has = {}, {}, {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid = qa["id"]
                has[qid] = bool(qa["answers"])
                golds = [a["text"] for a in qa["answers"] if _off_normalize(a["text"])] or [""]
                exact[qid] = max(int(_off_normalize(a) == _off_normalize(preds[qid])) for a in golds)
                f1[qid] = max(compute_f1(a, preds[qid]) for a in golds)
    out = {"exact": 100.0 * sum(exact.values()) / len(exact), "f1": 100.0 * sum(f1.values()) / len(f1)}
    for tag, want in (("HasAns", True), ("NoAns", False)):
        ids = [k for k, v in has.items() if v == want]
        out[f"{tag}_exact"] = 100.0 * sum(exact[k] for k in ids) / len(ids)
        out[f"{tag}_f1"] = 100.0 * sum(f1[k] for k in ids) / len(ids)
    return out


def _perturbed_predictions(dataset):
    """A spread of predictions: exact, partial, articles/punctuation/case, unicode, empty, wrong."""
    preds, i = {}, 0
    variants = [
        lambda a: a,
        lambda a: "The " + a.upper() + "!",
        lambda a: a.split()[0] if a.split() else "",
        lambda a: "",
        lambda a: "naïve café – " + a,
        lambda a: "unrelated words",
        lambda a: a + " and more",
        lambda a: "a an the",
        lambda a: "  " + a.replace(" ", "   ") + ".  ",
    ]
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                gold = qa["answers"][i % len(qa["answers"])]["text"] if qa["answers"] else "something"
                preds[qa["id"]] = variants[i % len(variants)](gold)
                i += 1
    return preds


@pytest.mark.parametrize("version", ["1.1", "2.0"])
def test_squad_metrics_match_official_scripts(version):
    from srlm.data.tasks import get_task

    path = SAMPLES / "squad" / f"dev-v{version}-sample.json"
    dataset = json.loads(path.read_text(encoding="utf-8"))["data"]
    preds = _perturbed_predictions(dataset)
    task = get_task("squad" if version == "1.1" else "squad2")
    examples = task.load(data=str(path))
    records = [{"extracted": preds[ex.id], "meta": ex.meta} for ex in examples]
    ours = task.metrics(records)
    if version == "1.1":
        ref = _off_v1(dataset, preds)
        assert ours["exact_match"] * 100 == pytest.approx(ref["exact_match"], abs=1e-6)
        assert ours["f1"] * 100 == pytest.approx(ref["f1"], abs=1e-6)
    else:
        ref = _off_v2(dataset, preds)
        assert ours["exact_match"] * 100 == pytest.approx(ref["exact"], abs=1e-6)
        assert ours["f1"] * 100 == pytest.approx(ref["f1"], abs=1e-6)
        for k in ("HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"):
            assert ours[k] * 100 == pytest.approx(ref[k], abs=1e-6), k
        assert 0 < ours["NoAns_exact"] < 1  # the fixture mixes right and wrong unanswerable predictions
    assert 0 < ours["exact_match"] < ours["f1"] < 1


def test_squad_answer_scores():
    assert M.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert M.exact_match("an apple", "Apple.") == 1.0
    assert M.f1_v1("", "force") == 0.0 and M.f1_v2("", "") == 1.0 and M.f1_v2("x", "") == 0.0
    assert M.score_one("", [], v2=True) == (1.0, 1.0)  # unanswerable, abstained
    assert M.score_one("the concept of force", ["force", "the concept of force"], v2=False) == (1.0, 1.0)
    assert M.f1_v1("concept of gravity", "the concept of force") == pytest.approx(2 / 3)
