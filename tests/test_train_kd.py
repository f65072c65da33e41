"""KD stage: tokenizer check, logit-level losses through the loop, on-policy samples, rejection sampling."""

import json

import pytest
import torch

from _train_fixtures import TINY_MODEL, make_tokenizer
from srlm.data.synthetic import generate_problems
from srlm.errors import SrlmError
from srlm.infer.engine import Completion, Engine
from srlm.model import CausalLM, preset, save
from srlm.tokenizer import Tokenizer, train_bpe
from srlm.train.config import load_config
from srlm.train.kd import KDConfig, check_same_tokenizer, generate_verified, run


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tok_dir):
    tok = Tokenizer.from_dir(tok_dir)
    torch.manual_seed(1)
    cfg = preset(
        "tiny",
        vocab_size=tok.vocab_size,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        eos_token_id=tok.eos_token_id,
    )
    model = CausalLM(cfg)
    with torch.no_grad():  # a sharper, clearly different distribution than a fresh student's
        model.lm_head.weight.mul_(20)
    return save(model, tmp_path_factory.mktemp("teacher") / "t", tokenizer=tok)


def _ov(out_dir, tok_dir, teacher, **extra):
    base = {
        "out_dir": str(out_dir),
        "tokenizer": str(tok_dir),
        "model": "tiny",
        "model_overrides": TINY_MODEL,
        "teacher": str(teacher),
        "data": "[synth-arith]",
        "data_options": "{n_train: 32, difficulties: [1]}",
        "steps": 4,
        "batch_size": 4,
        "lr": 3e-3,
        "dtype": "fp32",
        "num_threads": 1,
        "log_every": 1,
        "progress": "false",
        "max_seq_len": 128,
        "warmup_steps": 0,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _log(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_teacher_with_another_tokenizer_is_refused(tmp_path, tok_dir, teacher_dir):
    other = train_bpe(["completely different text " * 3, "nothing like the corpus"], 300)
    with pytest.raises(SrlmError, match="tokenizer differs"):
        check_same_tokenizer(Tokenizer.from_dir(tok_dir), other, "t2")
    other_dir = tmp_path / "other"
    model = CausalLM(
        preset(
            "tiny",
            vocab_size=other.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    save(model, other_dir, tokenizer=other)
    with pytest.raises(SrlmError, match="tokenizer differs"):
        run(load_config(KDConfig, None, _ov(tmp_path / "o", tok_dir, other_dir)))
    with pytest.raises(SrlmError, match="divergence"):
        run(load_config(KDConfig, None, _ov(tmp_path / "p", tok_dir, teacher_dir, divergence="kl")))


def test_self_distillation_is_zero_and_kd_to_a_teacher_falls(tmp_path, tok_dir, teacher_dir):
    # student initialised from the teacher itself: the divergence starts at 0
    out = tmp_path / "self"
    run(
        load_config(
            KDConfig,
            None,
            _ov(
                out,
                tok_dir,
                teacher_dir,
                init_from=str(teacher_dir),
                model="tiny",
                model_overrides="{}",
                kd_ratio=1.0,
                steps=1,
            ),
        )
    )
    assert _log(out)[0]["kd"] == pytest.approx(0.0, abs=1e-5)
    # a fresh student learns towards the teacher: kd per token falls
    out = tmp_path / "kd"
    run(
        load_config(
            KDConfig,
            None,
            _ov(
                out,
                tok_dir,
                teacher_dir,
                kd_ratio=0.9,
                divergence="jsd",
                jsd_beta=0.3,
                temperature=2.0,
                steps=10,
                lr=2e-2,
            ),
        )
    )
    log = [r for r in _log(out) if "kd" in r]
    assert log[-1]["kd"] < log[0]["kd"] * 0.9, [r["kd"] for r in log]
    assert all(r["ce"] > 0 for r in log)


def test_on_policy_batches_use_student_samples(tmp_path, tok_dir, teacher_dir):
    out = tmp_path / "onp"
    run(
        load_config(
            KDConfig,
            None,
            _ov(out, tok_dir, teacher_dir, on_policy=1.0, **{"on_policy_sampling.max_new_tokens": 8}, steps=2),
        )
    )
    log = [r for r in _log(out) if "kd" in r]
    assert [r["on_policy"] for r in log] == [1.0, 1.0] and all(r["kd"] > 0 for r in log)


def test_rejection_sampling_keeps_verified_samples_and_reuses_the_file(tmp_path, tok_dir, teacher_dir, monkeypatch):
    examples = generate_problems("arith", 6, difficulties=[1])

    def fake_generate(self, prompts, n=1, **kw):
        # sample 0 right, sample 1 wrong, sample 2 right but cut off (not kept), per prompt
        out = []
        for p in prompts:
            text = self.tokenizer.decode(p)
            ex = next(e for e in examples if e.prompt in text)
            good = f"<think>\n{ex.meta['reasoning']}\n</think>\n\nThe answer is {ex.answer}."
            out.append(
                [
                    Completion([1], good, "stop"),
                    Completion([1], "The answer is -1.", "stop"),
                    Completion([1], good, "length"),
                ][:n]
            )
        return out

    monkeypatch.setattr(Engine, "generate", fake_generate)
    cfg = load_config(
        KDConfig,
        None,
        _ov(
            tmp_path / "seq",
            tok_dir,
            teacher_dir,
            mode="sequence",
            samples_per_prompt=3,
            data_options="{n_train: 6, difficulties: [1]}",
        ),
    )
    from srlm.model import load

    teacher, tok = load(teacher_dir)
    convs, stats = generate_verified(cfg, teacher, tok)
    assert stats["samples"] == 18 and stats["correct"] == 6 and stats["kept"] == 6
    assert stats["kept_fraction"] == pytest.approx(1 / 3)
    assert all(c[-1]["content"].endswith(".") and "<think>" in c[-1]["content"] for c in convs)
    res = run(cfg)
    data = tmp_path / "seq" / "kd_data.jsonl"
    assert res["kd_kept"] == 6 and len(data.read_text().splitlines()) == 6
    # a second run with the same `generated` file never calls the teacher
    monkeypatch.setattr(Engine, "generate", lambda *a, **k: pytest.fail("teacher sampled again"))
    res = run(
        load_config(KDConfig, None, _ov(tmp_path / "seq2", tok_dir, teacher_dir, mode="sequence", generated=str(data)))
    )
    assert res["step"] == 4
