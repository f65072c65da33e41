"""`srlm train` end to end: overrides only (no --config), --resume, and the eval callback."""

import json

from _train_fixtures import make_tokenizer, sft_overrides
from srlm.cli import main as srlm_main


def test_cli_eval_callback_and_resume(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    out = tmp_path / "run"
    args = sft_overrides(
        out,
        tok,
        steps=2,
        save_every=2,
        eval_every=2,
        eval_limit=3,
        data="[synth-arith]",
        eval_tasks="[synth-arith]",
        data_options="{n_train: 32, difficulties: [1]}",
    )
    assert srlm_main(["train", "sft", *args]) == 0
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "eval/" in l]
    assert evals and evals[-1]["eval/synth-arith/n"] == 3 and 0 <= evals[-1]["eval/synth-arith/accuracy"] <= 1
    # continue the same run for 2 more steps
    assert srlm_main(["train", "sft", "--resume", *[a for a in args if not a.startswith("steps=")], "steps=4"]) == 0
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert steps == [1, 2, 3, 4]
    assert srlm_main(["train", "sft", *args, "lora.rnak=2"]) == 1  # unknown key: a clean error, exit 1
