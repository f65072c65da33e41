"""GRPO stage: rewards, failure counting, the loop end to end, num_iterations, reference KL, resume."""

import json

import pytest

from _train_fixtures import TINY_MODEL, make_tokenizer
from srlm.data.synthetic import generate_problems
from srlm.data.tasks import get_task
from srlm.errors import SrlmError
from srlm.train.config import load_config
from srlm.train.grpo import GRPOConfig, reward_correct, reward_format, run, score


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def _overrides(out_dir, tok_dir, **extra):
    base = {
        "out_dir": str(out_dir),
        "tokenizer": str(tok_dir),
        "model": "tiny",
        "model_overrides": TINY_MODEL,
        "task": "synth-arith",
        "task_options": "{difficulties: [1]}",
        "num_prompts": 16,
        "steps": 3,
        "batch_size": 8,
        "num_generations": 4,
        "sampling.max_new_tokens": 12,
        "dtype": "fp32",
        "num_threads": 1,
        "progress": "false",
        "lr": 1e-3,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _log(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_rewards_and_failures_are_counted():
    task = get_task("synth-gsm")
    ex = generate_problems("gsm", 1, difficulties=[1])[0]
    right = f"<think>\n{ex.meta['reasoning']}\n</think>\n\nThe answer is {ex.answer}."
    wrong = "The answer is -1."
    total, per, counts = score([right, wrong], [ex, ex], task, {"correct": 1.0, "format": 0.5})
    assert per["correct"].tolist() == [1.0, 0.0] and per["format"].tolist() == [1.0, 0.0]
    assert total.tolist() == [1.5, 0.0] and counts == {"errors": 0, "timeouts": 0}
    assert reward_format("<think></think> x", ex, task) == 0.0  # an empty thought is not the format

    def boom(text, example, task):
        raise ValueError("bug in a reward function")

    def slow(text, example, task):
        while True:
            pass

    total, per, counts = score(
        [right, wrong],
        [ex, ex],
        task,
        {"boom": 1.0, "slow": 1.0, "correct": 1.0},
        timeout_s=0.05,
        functions={"boom": boom, "slow": slow, "correct": reward_correct},
    )
    assert counts == {"errors": 2, "timeouts": 2}
    assert total.tolist() == [1.0, 0.0]


def test_bad_configs_are_refused(tok_dir, tmp_path):
    with pytest.raises(SrlmError, match="multiple of"):
        run(load_config(GRPOConfig, None, _overrides(tmp_path / "a", tok_dir, batch_size=6)))
    with pytest.raises(SrlmError, match="unknown reward"):
        run(load_config(GRPOConfig, None, _overrides(tmp_path / "b", tok_dir, rewards="{kindness: 1}")))
    with pytest.raises(SrlmError, match="loss_type"):
        run(load_config(GRPOConfig, None, _overrides(tmp_path / "c", tok_dir, loss_type="ppo")))


@pytest.fixture
def parity_reward():
    """A reward that varies on a random model (text length parity), so advantages are not all 0."""
    import srlm.train.grpo as grpo_mod

    grpo_mod.REWARDS["parity"] = lambda text, example, task: float(len(text) % 2)
    yield "{parity: 1.0, correct: 1.0}"
    del grpo_mod.REWARDS["parity"]


def test_grpo_runs_logs_and_resumes(tok_dir, tmp_path, parity_reward):
    out = tmp_path / "run"
    common = dict(num_iterations=2, beta=0.1, save_every=2, loss_type="grpo", epsilon_high=0.28, rewards=parity_reward)
    res = run(load_config(GRPOConfig, None, _overrides(out, tok_dir, **common)))
    assert (out / "final" / "model.safetensors").is_file()
    log = [r for r in _log(out) if "reward" in r]
    assert [r["step"] for r in log] == [1, 2, 3]
    for key in (
        "reward",
        "accuracy",
        "completion_len",
        "clip_fraction",
        "kl",
        "entropy",
        "time_generate_s",
        "time_optimize_s",
        "reward_errors",
        "verifier_timeouts",
    ):
        assert key in log[0], key
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts at the reference
    assert log[1]["kl"] > 0  # step 2 reuses step 1's rollouts after an update
    assert log[0]["time_generate_s"] > 0 and log[1]["time_generate_s"] == log[0]["time_generate_s"]
    # resume from checkpoint-2 to 4 steps
    res2 = run(load_config(GRPOConfig, None, _overrides(out, tok_dir, steps=4, resume="true", **common)))
    assert res2["step"] == 4 and res["step"] == 3


def test_grpo_improves_reward_on_a_trivial_target(tok_dir, tmp_path):
    """Reward = shorter text; a few GRPO steps on a random model must raise it (a loss with the wrong sign,
    or advantages misaligned with their completions, would not)."""
    import srlm.train.grpo as grpo_mod

    grpo_mod.REWARDS["short"] = lambda text, example, task: -len(text) / 5
    try:
        out = tmp_path / "learn"
        cfg = load_config(
            GRPOConfig,
            None,
            _overrides(
                out,
                tok_dir,
                rewards="{short: 1.0}",
                steps=16,
                batch_size=16,
                num_generations=8,
                lr=3e-2,
                scale_rewards="none",
                **{"sampling": "{temperature: 1.0, max_new_tokens: 1}"},
            ),
        )
        run(cfg)
    finally:
        del grpo_mod.REWARDS["short"]
    rewards = [r["reward"] for r in _log(out) if "reward" in r]
    # a random model's one-token texts average ~1.4 characters (-0.28); the shortest are 1 character (-0.2), so
    # the room to improve is ~0.08 unless the policy finds the empty stop token (0)
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.05, rewards


def test_shipped_stage_configs_load():
    from pathlib import Path

    from srlm.train.kd import KDConfig

    recipes = Path(__file__).resolve().parents[1] / "src" / "srlm" / "recipes" / "configs"
    g = load_config(GRPOConfig, recipes / "grpo-tiny.yaml")
    k = load_config(KDConfig, recipes / "kd-tiny.yaml")
    assert g.batch_size % g.num_generations == 0 and g.loss_type == "dapo"
    assert k.mode == "logit" and k.teacher


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_update_skips_idle_rows_and_shares_prompts_exactly(tok_dir, tmp_path, loss_type):
    """With beta 0 the stage runs only completions whose advantage is non-zero, trims padding
    columns, and runs each group's prompt once for all its completions; the summed loss (before
    the loop divides by the whole batch's units) and every gradient equal the plain computation
    over all rows."""
    import torch

    from srlm.train.grpo import GRPOStage, prepare
    from srlm.train.losses import grpo_loss, token_logprobs

    cfg = load_config(
        GRPOConfig,
        None,
        _overrides(tmp_path, tok_dir, loss_type=loss_type, epsilon_high=0.28, mask_truncated_completions="true"),
    )
    model, tok = prepare(cfg)
    stage = GRPOStage(cfg, tok, model=model)
    stage.buffer = {"stats": {}}
    g = torch.Generator().manual_seed(0)
    R, L, V = 6, 24, model.config.vocab_size
    ids = torch.randint(0, V, (R, L), generator=g)
    prompt_len = torch.tensor([6, 6, 6, 4, 4, 4])  # two groups of three completions
    ids[1:3, :6] = ids[0, :6]
    ids[4:6, :4] = ids[3, :4]
    mask = torch.zeros(R, L - 1, dtype=torch.bool)
    for r, end in enumerate([12, 20, 9, 17, 8, 11]):
        mask[r, int(prompt_len[r]) - 1 : end] = True  # no row reaches the last columns: they get trimmed
    batch = {
        "input_ids": ids,
        "mask": mask,
        "advantages": torch.tensor([0.0, 1.3, 0.0, -0.6, 0.0, 0.4]),
        "truncated": torch.tensor([False, False, False, False, False, True]),
        "prompt_len": prompt_len,
        "old_logps": -torch.rand(R, L - 1, generator=g) * 3,
    }  # ratios far from 1: clipping bites

    def plain(batch):
        h = model.hidden_states(batch["input_ids"])[:, :-1][batch["mask"]]
        lp, _ = token_logprobs(h, model.lm_head.weight, batch["input_ids"][:, 1:][batch["mask"]])
        logps = torch.zeros(batch["mask"].shape).masked_scatter(batch["mask"], lp)
        loss, _ = grpo_loss(
            logps,
            batch["old_logps"],
            batch["advantages"],
            batch["mask"],
            epsilon_low=0.2,
            epsilon_high=0.28,
            loss_type=loss_type,
            max_len=cfg.sampling.max_new_tokens,
            truncated=batch["truncated"],
        )
        return loss * stage.weight(batch)

    calls = []
    shared = model.shared_prefix_hidden_states
    model.shared_prefix_hidden_states = lambda p, s: calls.append((p.shape, s.shape)) or shared(p, s)
    for b in (batch, {**batch, "advantages": torch.zeros(R)}):
        model.zero_grad()
        want = plain(b)
        want.backward()
        want_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        got, _ = stage.loss(model, b)
        got.backward()
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5, abs=1e-7)
        for p, w in zip(model.parameters(), want_grads):
            assert p.grad is not None  # every parameter takes part, even when no row can move the policy
            torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-7)
    # rows 1 | 3, 5 (prompt run once for both); then row 0 alone when every advantage is 0
    assert calls == [((1, 6), (1, 15)), ((1, 4), (2, 14)), ((1, 6), (1, 7))]
    assert stage._informative(batch)["input_ids"].shape == (3, 21)
