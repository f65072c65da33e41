"""The harness end to end with fake backends (no model), and `srlm eval` with a fake backend."""

import argparse
import json
from pathlib import Path

import pytest

from srlm.data.tasks import get_task
from srlm.errors import SrlmError
from srlm.eval import cli
from srlm.eval.harness import Backend, evaluate

SAMPLES = Path(__file__).resolve().parent / "data"


class Scripted:
    """Answers each prompt from a table keyed by the question text found in the prompt."""

    def __init__(self, answers: dict[str, list[str]], logliks=None):
        self.answers, self.logliks, self.calls = answers, logliks, []

    def _key(self, prompt):
        text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        last = text.rsplit("Question: ", 1)[-1] if "Problem:" not in text else text.rsplit("Problem: ", 1)[-1]
        return next(k for k in self.answers if k in last)

    def generate(self, prompts, n, max_new_tokens, temperature, stop):
        self.calls.append((prompts, n, max_new_tokens, temperature, stop))
        return [(self.answers[self._key(p)] * n)[:n] for p in prompts]

    def loglikelihood(self, requests):
        self.calls.append(requests)
        return [self.logliks(ctx, cont) for ctx, cont in requests]


def _gsm():
    return get_task("gsm8k"), get_task("gsm8k").load(split="train", data=str(SAMPLES / "gsm8k"), limit=6)


def test_backend_protocol_is_structural():
    assert isinstance(Scripted({}), Backend)


def test_gold_and_wrong_backends_on_gsm8k():
    task, ex = _gsm()
    gold = Scripted({e.prompt: [e.solution] for e in ex})
    m, recs = evaluate(task, ex, gold, shots=2, batch_size=4, progress=False)
    assert m["accuracy"] == m["exact_match_strict"] == 1.0 and m["n"] == 6
    assert len(gold.calls) == 2 and gold.calls[0][4] == ["\nQuestion:"]  # two batches, plain-prompt stop
    assert recs[0]["prompt"].count("Question:") == 3 and recs[0]["correct"] and recs[0]["gold"] == "72"
    wrong = Scripted({e.prompt: ["The answer is 123456."] for e in ex})
    m, recs = evaluate(task, ex, wrong, progress=False)
    assert m["accuracy"] == 0.0 and recs[0]["extracted"] == "123456" and not recs[0]["correct"]


def test_samples_give_pass_at_k_and_majority():
    task, ex = _gsm()
    # first example: 1 right of 4; others: 3 right of 4 with the wrong one first
    answers = {e.prompt: ["#### 0", f"#### {e.answer}", f"#### {e.answer}", f"#### {e.answer}"] for e in ex}
    answers[ex[0].prompt] = ["#### 1", "#### 2", "#### 2", f"#### {ex[0].answer}"]
    m, recs = evaluate(task, ex, Scripted(answers), samples=4, temperature=0.8, progress=False)
    assert recs[0]["majority"] == "2" and not recs[0]["majority_correct"]
    assert m["maj@4"] == pytest.approx(5 / 6)
    assert m["pass@1"] == pytest.approx((0.25 + 5 * 0.75) / 6)
    assert m["pass@4"] == 1.0 and set(m) >= {"pass@2", "accuracy"}
    assert m["accuracy"] == pytest.approx(0.0)  # metrics see the first sample


def test_chat_prompts_are_message_lists():
    task, ex = _gsm()
    be = Scripted({e.prompt: [e.solution] for e in ex})
    m, recs = evaluate(task, ex[:2], be, chat=True, shots=1, progress=False)
    p = recs[0]["prompt"]
    assert isinstance(p, list) and [x["role"] for x in p] == ["user", "assistant", "user"]
    assert be.calls[0][4] is None and m["accuracy"] == 1.0


def test_loglik_glue_and_stsb_expectation():
    task = get_task("glue-rte")
    ex = task.load(data=str(SAMPLES / "glue"), limit=10)
    gold = {e.prompt: e.answer for e in ex}
    be = Scripted({}, logliks=lambda ctx, cont: 0.0 if cont == " " + gold[ctx] else -3.0)
    m, recs = evaluate(task, ex, be, progress=False)
    assert m["accuracy"] == 1.0 and len(be.calls[0]) == 2 * 8 and recs[0]["logliks"][0] < 0
    flip = Scripted({}, logliks=lambda ctx, cont: -3.0 if cont == " " + gold[ctx] else 0.0)
    assert evaluate(task, ex, flip, progress=False)[0]["accuracy"] == 0.0
    stsb = get_task("glue-stsb")
    ex = stsb.load(data=str(SAMPLES / "glue"), limit=8)
    be = Scripted({}, logliks=lambda ctx, cont: 0.0 if cont in (" 2", " 4") else -1e9)
    m, recs = evaluate(stsb, ex, be, progress=False)
    assert float(recs[0]["extracted"]) == pytest.approx(3.0)  # expectation of 2 and 4, equally likely
    assert m["invalid"] == 0 and m["n"] == 8
    with pytest.raises(SrlmError, match="chat prompts"):
        evaluate(task, ex, be, chat=True, progress=False)


def test_glue_by_generation_for_finetuned_models():
    task = get_task("glue-sst2")
    ex = task.load(data=str(SAMPLES / "glue"), limit=6)
    be = Scripted({e.prompt.split("\n")[0]: [f" {e.answer}\n"] for e in ex})
    be._key = lambda p: p.rsplit("\n\n", 1)[-1].split("\n")[0]
    m, recs = evaluate(task, ex, be, scoring="generate", progress=False)
    assert m["accuracy"] == 1.0 and be.calls[0][4] == ["\n"]


def test_synthetic_task_through_the_same_harness():
    try:
        task = get_task("synth-arith")
    except SrlmError:
        pytest.skip("synthetic tasks not available yet")
    ex = task.load(split="test", limit=4)
    be = Scripted({task.format_prompt(e): [e.solution] for e in ex})
    be._key = lambda p: p  # exact prompts: no special case for synthetic tasks anywhere
    m, _ = evaluate(task, ex, be, progress=False)
    assert m["accuracy"] == 1.0


def _args(tmp_path, **kw):
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    argv = [str(tmp_path / "ckpt")] + kw.pop("argv")
    return p.parse_args(argv)


def test_cli_writes_metrics_and_records(tmp_path, monkeypatch):
    ex = get_task("gsm8k").load(split="train", data=str(SAMPLES / "gsm8k"))
    backend = Scripted({e.prompt: [e.solution] for e in ex})
    glue = {e.prompt: e.answer for e in get_task("glue-cola").load(data=str(SAMPLES / "glue"))}
    glue.update({e.prompt: e.answer for e in get_task("glue-sst2").load(data=str(SAMPLES / "glue"))})
    backend.logliks = lambda ctx, cont: 0.0 if cont == " " + glue.get(ctx.rsplit("\n\n", 1)[-1], "?") else -2.0
    monkeypatch.setattr(cli, "make_backend", lambda path, args: backend)
    out = tmp_path / "res" / "m.json"
    args = _args(tmp_path, argv=["--task", "gsm8k,glue", "--data", f"gsm8k={SAMPLES / 'gsm8k' / 'train_sample.jsonl'}",
                                 "--data", f"glue={SAMPLES / 'glue'}", "--limit", "5", "--shots", "1",
                                 "--out", str(out), "--no-progress"])
    assert cli.main(args) == 0
    res = json.loads(out.read_text())
    assert res["tasks"]["gsm8k"]["accuracy"] == 1.0 and res["tasks"]["glue-sst2"]["accuracy"] == 1.0
    assert res["glue"]["tasks"] == 9 and "score" in res["glue"]  # all nine, QQP included
    recs = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(recs) == 5 * 10  # gsm8k and the nine GLUE tasks and recs[0]["task"] == "gsm8k" and recs[0]["correct"]


def test_cli_rejects_unknown_task_before_loading_a_model(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "make_backend", lambda *a: pytest.fail("model loaded"))
    with pytest.raises(SrlmError, match="unknown task 'gsm9k'"):
        cli.run(_args(tmp_path, argv=["--task", "gsm9k"]))
    with pytest.raises(SrlmError, match="no GLUE task files"):
        cli.run(_args(tmp_path, argv=["--task", "glue", "--data", str(tmp_path)]))
