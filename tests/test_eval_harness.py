"""The harness end to end with fake backends (no model), and `srlm eval` with a fake backend."""

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import pytest

import srlm
from srlm.commands import eval as cli
from srlm.data.tasks import SAMPLERS, get_task
from srlm.errors import SrlmError
from srlm.eval import run as eval_run
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


def _gsm_pool():
    """Other GSM8K records than _gsm()'s, standing in for the train split."""
    return get_task("gsm8k").load(split="train", data=str(SAMPLES / "gsm8k"))[6:]


def test_backend_protocol_is_structural():
    assert isinstance(Scripted({}), Backend)


def test_gold_and_wrong_backends_on_gsm8k():
    task, ex = _gsm()
    gold = Scripted({e.prompt: [e.solution] for e in ex})
    m, recs = evaluate(task, ex, gold, shots=2, batch_size=4, shot_pool=_gsm_pool(), progress=False)
    assert m["accuracy"] == m["exact_match,strict-match"] == m["exact_match,flexible-extract"] == 1.0 and m["n"] == 6
    assert len(gold.calls) == 2 and gold.calls[0][4] == ["Question:", "</s>", "<|im_end|>"]  # lm-eval's stops
    assert gold.calls[0][2] == 256  # lm-eval's default generation length
    assert recs[0]["prompt"].count("Question:") == 3 and recs[0]["correct"] and recs[0]["gold"] == "72"
    pool_questions = {e.meta["question"] for e in _gsm_pool()}
    assert all(q.split("\nAnswer:")[0] in pool_questions for r in recs for q in r["prompt"].split("Question: ")[1:-1])
    wrong = Scripted({e.prompt: ["The answer is 123456."] for e in ex})
    m, recs = evaluate(task, ex, wrong, shots=0, progress=False)
    assert m["accuracy"] == 0.0 and recs[0]["extracted"] == "123456" and not recs[0]["correct"]


def test_shots_never_fall_back_to_the_evaluated_examples():
    task, ex = _gsm()
    be = Scripted({e.prompt: [e.solution] for e in ex})
    with pytest.raises(SrlmError, match="5-shot prompts draw their examples from the train split"):
        evaluate(task, ex, be, progress=False)  # the gsm8k template is 5-shot, and no train examples were given
    with pytest.raises(SrlmError, match="2-shot"):
        evaluate(task, ex, be, chat=True, shots=2, progress=False)
    m, recs = evaluate(task, ex, be, prompt="gsm8k_cot", progress=False)  # fixed exemplars need no train split
    assert recs[0]["prompt"].startswith("Q: There are 15 trees") and recs[0]["prompt"].count("\nA:") == 9
    assert be.calls[-1][4] == ["Q:", "</s>", "<|im_end|>"]
    with pytest.raises(SrlmError, match="at most 8"):
        evaluate(task, ex, be, prompt="gsm8k_cot", shots=9, progress=False)


def test_samples_give_pass_at_k_and_majority():
    task, ex = _gsm()
    # first example: 1 right of 4; others: 3 right of 4 with the wrong one first
    answers = {e.prompt: ["#### 0", f"#### {e.answer}", f"#### {e.answer}", f"#### {e.answer}"] for e in ex}
    answers[ex[0].prompt] = ["#### 1", "#### 2", "#### 2", f"#### {ex[0].answer}"]
    m, recs = evaluate(task, ex, Scripted(answers), shots=0, samples=4, temperature=0.8, progress=False)
    assert recs[0]["majority"] == "2" and not recs[0]["majority_correct"]
    assert m["maj@4"] == pytest.approx(5 / 6)
    assert m["pass@1"] == pytest.approx((0.25 + 5 * 0.75) / 6)
    assert m["pass@4"] == 1.0 and set(m) >= {"pass@2", "accuracy"}
    assert m["accuracy"] == pytest.approx(0.0)  # metrics see the first sample


def test_chat_prompts_are_message_lists():
    task, ex = _gsm()
    be = Scripted({e.prompt: [e.solution] for e in ex})
    m, recs = evaluate(task, ex[:2], be, chat=True, shots=1, shot_pool=_gsm_pool(), progress=False)
    p = recs[0]["prompt"]
    assert isinstance(p, list) and [x["role"] for x in p] == ["user", "assistant", "user"]
    assert p[-1]["content"] == ex[0].prompt  # the default chat template is the bare question
    assert be.calls[0][4] is None and m["accuracy"] == 1.0
    m, recs = evaluate(task, ex[:2], be, prompt="chat-boxed", progress=False)  # chat-only: chat is implied
    assert recs[0]["prompt"] == [
        {
            "role": "user",
            "content": ex[0].prompt + "\n\nPlease reason step by step, and put your final answer within \\boxed{}.",
        }
    ]
    assert be.calls[-1][2] == 512 and be.calls[-1][4] is None
    m, recs = evaluate(task, ex[:2], be, prompt="chat", progress=False)
    assert recs[0]["prompt"][0]["content"].endswith(
        'write your final answer as a number after "####" on the last line.'
    )
    m, recs = evaluate(task, ex[:2], be, prompt="gsm8k", chat=True, shots=1, shot_pool=_gsm_pool(), progress=False)
    assert recs[0]["prompt"][0]["content"].startswith("Question: ") and len(recs[0]["prompt"]) == 1
    assert be.calls[-1][4] == ["Question:", "</s>", "<|im_end|>"]  # a text template keeps its stops under chat


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


@pytest.fixture
def gsm_dir(tmp_path):
    """GSM8K in the official layout: train.jsonl and test.jsonl apart."""
    d = tmp_path / "gsm8k"
    d.mkdir()
    lines = (SAMPLES / "gsm8k" / "train_sample.jsonl").read_text(encoding="utf-8").splitlines()
    (d / "train.jsonl").write_text("\n".join(lines[:22]) + "\n", encoding="utf-8")
    (d / "test.jsonl").write_text("\n".join(lines[22:]) + "\n", encoding="utf-8")
    return d


def _gold_backend():
    ex = get_task("gsm8k").load(split="train", data=str(SAMPLES / "gsm8k"))
    return Scripted({e.prompt: [e.solution] for e in ex})


def test_cli_writes_metrics_records_and_protocol_cards(tmp_path, gsm_dir, monkeypatch, capsys):
    backend = _gold_backend()
    glue = {e.prompt: e.answer for e in get_task("glue-cola").load(data=str(SAMPLES / "glue"))}
    glue.update({e.prompt: e.answer for e in get_task("glue-sst2").load(data=str(SAMPLES / "glue"))})
    backend.logliks = lambda ctx, cont: 0.0 if cont == " " + glue.get(ctx, "?") else -2.0
    monkeypatch.setattr(eval_run, "make_backend", lambda *a, **k: backend)
    out = tmp_path / "res" / "m.json"
    args = _args(
        tmp_path,
        argv=[
            "--task",
            "gsm8k,glue",
            "--data",
            f"gsm8k={gsm_dir}",
            "--data",
            f"glue={SAMPLES / 'glue'}",
            "--limit",
            "5",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert cli.main(args) == 0
    res = json.loads(out.read_text())
    g = res["tasks"]["gsm8k"]
    assert g["accuracy"] == g["exact_match,strict-match"] == g["exact_match,flexible-extract"] == 1.0 and g["n"] == 5
    assert res["tasks"]["glue-sst2"]["accuracy"] == 1.0 and res["glue"]["tasks"] == 9  # all nine GLUE tasks
    recs = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(recs) == 5 * 10 and recs[0]["task"] == "gsm8k" and recs[0]["correct"]
    assert recs[0]["prompt"].count("Question: ") == 6  # lm-eval's gsm8k: 5 shots by default

    card = res["protocol"]["gsm8k"]
    test_file, train_file = gsm_dir / "test.jsonl", gsm_dir / "train.jsonl"
    assert card["data"] == {
        "file": str(test_file),
        "sha256": hashlib.sha256(test_file.read_bytes()).hexdigest(),
        "records": 8,
        "evaluated": 5,
    }
    assert card["prompt"]["name"] == "gsm8k" and "lm-evaluation-harness" in card["prompt"]["reference"]
    assert card["shots"]["n"] == 5 and card["shots"]["sampler"] == "lm-eval" and card["shots"]["records"] == 22
    assert card["shots"]["file"] == str(train_file)
    assert card["shots"]["sha256"] == hashlib.sha256(train_file.read_bytes()).hexdigest()
    assert card["chat_template"] is False
    assert card["generation"] == {
        "scoring": "generate",
        "temperature": 0.0,
        "samples": 1,
        "max_new_tokens": 256,
        "stop": ["Question:", "</s>", "<|im_end|>"],
        "seed": 0,
    }
    assert set(card["metrics"]) == {"exact_match,strict-match", "exact_match,flexible-extract", "accuracy"}
    assert card["versions"]["srlm"] == srlm.__version__ and "lm-evaluation-harness" in card["versions"]
    assert card["wall_time_s"] >= 0 and card["model"]["path"] == str(tmp_path / "ckpt")
    cola = res["protocol"]["glue-cola"]
    assert cola["shots"] == {"n": 0} and cola["generation"] == {"scoring": "loglik"} and cola["data"]["records"] == 41

    printed = capsys.readouterr().out.splitlines()
    lines = [x for x in printed if x.startswith("protocol ")]
    assert len(lines) == 10 and lines[0].startswith("protocol gsm8k: test.jsonl sha256:")
    assert "5-shot from train.jsonl (lm-eval sampler)" in lines[0] and "no chat template" in lines[0]
    assert "greedy, 1 sample(s), max 256 new tokens" in lines[0]
    assert any(x.startswith("  gsm8k accuracy: srlm's lenient reading (not comparable") for x in printed)


def test_cli_few_shot_examples_never_come_from_the_evaluated_split(tmp_path, gsm_dir, monkeypatch):
    monkeypatch.setattr(eval_run, "make_backend", lambda *a, **k: _gold_backend())
    test, train = gsm_dir / "test.jsonl", gsm_dir / "train.jsonl"

    def run(*argv):
        return cli.run(
            _args(tmp_path, argv=["--task", "gsm8k", "--out", str(tmp_path / "e.json"), "--no-progress", *argv])
        )

    with pytest.raises(SrlmError, match=r"one file, the evaluated test split; .*--shot-data, or use --shots 0"):
        run("--data", str(test), "--shots", "8")  # the README's old example
    with pytest.raises(SrlmError, match="5-shot prompts take their examples from the train split, but --data"):
        run("--data", str(test))  # the gsm8k template is 5-shot by default
    with pytest.raises(SrlmError, match="which is the split being evaluated"):
        run("--data", str(gsm_dir), "--split", "train")
    with pytest.raises(SrlmError, match="is the evaluated file"):
        run("--data", str(test), "--shot-data", str(test))
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    shutil.copy(test, only_test / "test.jsonl")
    with pytest.raises(SrlmError, match="its name does not say train"):
        run("--data", str(only_test))
    with pytest.raises(SrlmError, match="brings its own exemplars"):
        run("--data", str(test), "--prompt", "gsm8k_cot", "--shot-data", str(train))

    res = run("--data", str(test), "--shot-data", str(train), "--shots", "3")
    assert res["protocol"]["gsm8k"]["shots"]["file"] == str(train) and res["tasks"]["gsm8k"]["accuracy"] == 1.0
    res = run("--data", str(test), "--prompt", "gsm8k_cot")
    assert res["protocol"]["gsm8k"]["shots"] == {
        "n": 8,
        "sampler": "fixed",
        "selection": SAMPLERS["fixed"],
        "from": "the gsm8k_cot template's exemplars",
    }
    res = run("--data", str(test), "--shots", "0")
    assert res["protocol"]["gsm8k"]["shots"] == {"n": 0}
    res = run("--data", str(test), "--chat")  # chat: the bare question, zero-shot, as the recipe runner evaluates
    assert res["protocol"]["gsm8k"]["prompt"]["name"] == "question" and res["protocol"]["gsm8k"]["chat_template"]


def test_generated_tasks_draw_shots_from_their_generated_train_split(tmp_path):
    try:
        task = get_task("synth-arith")
    except SrlmError:
        pytest.skip("synthetic tasks not available yet")
    ex = task.load(split="test", limit=3)
    be = Scripted({}, logliks=None)
    be.generate = lambda prompts, n, max_new_tokens, temperature, stop: [[e.solution] for e in ex]
    result = eval_run.evaluate(None, "synth-arith", shots=2, limit=3, backend=be, progress=False)
    card = result.protocol["synth-arith"]
    assert card["shots"]["from"] == "the generated train split" and card["data"]["generated"]
    test_ids = {e.id for e in ex}
    assert all(r["prompt"].count("Question:") == 3 for r in result.records)
    assert not any(e.id in test_ids for e in task.load(split="train", limit=3))
    path = tmp_path / "held.jsonl"
    from srlm.data.synthetic import save_jsonl

    save_jsonl(ex, path)
    with pytest.raises(SrlmError, match="one file"):
        eval_run.evaluate(None, "synth-arith", str(path), shots=2, backend=be, progress=False)


def test_cli_rejects_unknown_task_before_loading_a_model(tmp_path, monkeypatch):
    monkeypatch.setattr(eval_run, "make_backend", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(SrlmError, match="unknown task 'gsm9k'"):
        cli.run(_args(tmp_path, argv=["--task", "gsm9k"]))
    with pytest.raises(SrlmError, match="no GLUE task files"):
        cli.run(_args(tmp_path, argv=["--task", "glue", "--data", str(tmp_path)]))
    with pytest.raises(SrlmError, match="unknown prompt 'gsm8k-cot'; this task has gsm8k, gsm8k_cot"):
        cli.run(_args(tmp_path, argv=["--task", "gsm8k", "--prompt", "gsm8k-cot", "--data", str(tmp_path)]))


def test_srlm_eval_end_to_end_on_a_tiny_checkpoint(tmp_path, gsm_dir, capsys):
    """The real command on a model built here: the engine gets lm-eval's prompt and stops, eval.json its card."""
    import torch

    from srlm.cli import main as srlm_main
    from srlm.model import CausalLM, preset, save
    from srlm.tokenizer import train_bpe

    tok = train_bpe(
        ["Question: Tom has 12 apples and eats 3. How many are left?\nAnswer: 12 - 3 = 9\n#### 9"] * 30, vocab_size=300
    )
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny"
    save(CausalLM(preset("tiny", vocab_size=tok.vocab_size)).eval(), ckpt, tokenizer=tok)
    for prompt, extra in (("gsm8k", ["--shots", "0"]), ("chat-boxed", [])):  # short prompts: a tiny CPU model
        assert (
            srlm_main(
                [
                    "eval",
                    str(ckpt),
                    "--task",
                    "gsm8k",
                    "--data",
                    str(gsm_dir),
                    "--prompt",
                    prompt,
                    "--limit",
                    "2",
                    "--max-new-tokens",
                    "4",
                    "--no-progress",
                    "--out",
                    str(tmp_path / f"{prompt}.json"),
                    *extra,
                ]
            )
            == 0
        )
        res = json.loads((tmp_path / f"{prompt}.json").read_text())
        card = res["protocol"]["gsm8k"]
        assert card["prompt"]["name"] == prompt and card["data"]["evaluated"] == 2 and res["tasks"]["gsm8k"]["n"] == 2
        assert card["generation"]["max_new_tokens"] == 4 and card["chat_template"] == (prompt == "chat-boxed")
        assert card["shots"] == {"n": 0}
    out = capsys.readouterr().out
    assert out.count("\nprotocol gsm8k: test.jsonl sha256:") == 2
