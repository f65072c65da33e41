"""Bad input gets one line naming the file and field (exit 1), never a traceback or a silently wrong run."""

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

from _train_fixtures import make_tokenizer, sft_overrides
from srlm.cli import main as srlm_main
from srlm.commands import eval as eval_cli
from srlm.data.tasks import get_task
from srlm.errors import SrlmError
from srlm.eval import run as eval_run
from srlm.eval.score import score
from srlm.model import CausalLM, load_model, preset, save
from srlm.tokenizer import Tokenizer
from srlm.train.config import load_config
from srlm.train.loop import list_checkpoints
from srlm.train.sft import SFTConfig, run

SAMPLES = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok_dir):
    tok = Tokenizer.from_dir(tok_dir)
    torch.manual_seed(0)
    model = CausalLM(
        preset(
            "tiny",
            vocab_size=tok.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    return save(model, tmp_path_factory.mktemp("ckpt") / "tiny", tokenizer=tok)


def one_error_line(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("srlm: warning")]
    assert len(lines) == 1 and lines[0].startswith("srlm: error: ") and "Traceback" not in err, err
    for n in names:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- config.json


@pytest.mark.parametrize(
    "change, field",
    [
        ({"rope_theta": "abc"}, "'rope_theta' must be a number"),
        ({"rms_norm_eps": None}, "'rms_norm_eps' must be a number"),
        ({"tie_word_embeddings": "false"}, "'tie_word_embeddings' must be true or false"),
        ({"num_attention_heads": 2.5}, "'num_attention_heads' must be an integer"),
        ({"eos_token_id": "</s>"}, "'eos_token_id' must be an integer"),
        ({"rope_scaling": {"rope_type": "linear", "factor": "2"}}, "'rope_scaling.factor' must be > 0"),
        ({"hidden_size": None}, "'hidden_size' must be an integer"),
        ({"hidden_size": "DELETE"}, "required field(s) 'hidden_size' missing"),
        ({"vocab_size": "DELETE"}, "required field(s) 'vocab_size' missing"),
    ],
)
def test_bad_config_json_fields_name_file_and_field(tmp_path, ckpt, capsys, change, field):
    folder = tmp_path / "ck"
    shutil.copytree(ckpt, folder)
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in change.items():
        cfg.pop(k) if v == "DELETE" else cfg.__setitem__(k, v)
    (folder / "config.json").write_text(json.dumps(cfg))
    for argv in (["info", str(folder)], ["generate", str(folder), "--prompt", "hi"]):  # info invents nothing
        assert srlm_main(argv) == 1
        one_error_line(capsys, f"{folder / 'config.json'}: ", field)


def test_config_json_that_is_not_an_object(tmp_path, ckpt, capsys):
    folder = tmp_path / "ck"
    shutil.copytree(ckpt, folder)
    (folder / "config.json").write_text("[1, 2]")
    assert srlm_main(["info", str(folder)]) == 1
    one_error_line(capsys, "config.json: expected a JSON object of model fields, got list")


# ----------------------------------------------------------------------------- command-line text


def test_non_utf8_prompt_and_empty_stop_are_refused(ckpt, capsys):
    # Python hands undecodable argv bytes (here 0xff) over as lone surrogates
    assert srlm_main(["generate", str(ckpt), "--prompt", "Tom has \udcff apples"]) == 1
    one_error_line(capsys, "--prompt: not valid UTF-8 text (byte 0xff at character 9)")
    assert srlm_main(["generate", str(ckpt), "--prompt", "Tom", "--stop", ""]) == 1
    one_error_line(capsys, "--stop '': an empty stop string")
    assert srlm_main(["generate", str(ckpt), "--prompt", "Tom", "--stop", "\udc80x"]) == 1
    one_error_line(capsys, "--stop: not valid UTF-8")


# ----------------------------------------------------------------------------- training options


@pytest.mark.parametrize(
    "override, message",
    [
        ("lr=-1", "lr must be a number >= 0, got -1.0"),
        ("warmup_steps=-3", "warmup_steps must be an integer >= 0"),
        ("save_every=-1", "save_every must be an integer >= 0"),
        ("keep_last=-1", "keep_last must be an integer >= 0 (0: keep every checkpoint)"),
        ("log_every=0", "log_every must be a positive integer"),
        ("betas=[0.9,1.5]", "betas must be two numbers in [0, 1)"),
        ("lr=abc", "lr: expected a number, got 'abc'"),
    ],
)
def test_out_of_range_training_options_are_blamed_on_the_command_line(tmp_path, tok_dir, capsys, override, message):
    yaml_file = tmp_path / "sft.yaml"
    yaml_file.write_text("lr: 1.0e-3\nsteps: 4\nsave_every: 2\n")
    argv = ["train", "sft", "--config", str(yaml_file), f"out_dir={tmp_path / 'out'}", f"tokenizer={tok_dir}", override]
    assert srlm_main(argv) == 1
    line = one_error_line(capsys, f"command-line override {override!r}", message)
    assert str(yaml_file) not in line  # the YAML file is right; the override is not
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_out_of_range_value_in_a_yaml_file_names_its_line(tmp_path):
    yaml_file = tmp_path / "sft.yaml"
    yaml_file.write_text("steps: 4\nwarmup_steps: -3\n")
    with pytest.raises(SrlmError, match=rf"{yaml_file}:2: warmup_steps must be an integer >= 0"):
        load_config(SFTConfig, yaml_file, [])


def test_keep_last_0_keeps_every_checkpoint(tmp_path, tok_dir):
    out = tmp_path / "run"
    run(load_config(SFTConfig, None, sft_overrides(out, tok_dir, steps=6, save_every=2, keep_last=0)))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-000002", "checkpoint-000004", "checkpoint-000006"]


# ----------------------------------------------------------------------------- data


def test_gsm8k_answer_that_is_not_a_number_names_file_and_line(tmp_path):
    rows = [json.loads(line) for line in (SAMPLES / "gsm8k" / "train_sample.jsonl").read_text().splitlines()[:3]]
    rows[2]["answer"] = rows[2]["answer"].rsplit("####", 1)[0] + "#### ten dollars"
    f = tmp_path / "test.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        SrlmError,
        match=rf"{f}:3: field 'answer': the final answer after '####' is 'ten dollars', "
        "not a number",
    ):
        get_task("gsm8k").load(data=str(f))


def test_srlm_eval_records_score_against_the_same_data_under_another_name(tmp_path, monkeypatch, capsys):
    """One GSM8K id scheme (0-based positions) for `srlm eval`'s records and `srlm score`."""
    data = tmp_path / "test.jsonl"
    shutil.copy(SAMPLES / "gsm8k" / "train_sample.jsonl", data)
    examples = get_task("gsm8k").load(data=str(data), limit=4)
    assert [e.id for e in examples] == ["0", "1", "2", "3"]
    answers = {e.prompt: e.solution for e in examples}

    class Gold:
        def generate(self, prompts, n, max_new_tokens, temperature, stop):
            return [[next(s for q, s in answers.items() if q in p)] * n for p in prompts]

    monkeypatch.setattr(eval_run, "make_backend", lambda *a, **k: Gold())
    p = argparse.ArgumentParser()
    eval_cli.add_arguments(p)
    out = tmp_path / "res" / "gsm8k.json"
    eval_cli.run(
        p.parse_args(
            [
                str(tmp_path),
                "--task",
                "gsm8k",
                "--data",
                str(data),
                "--limit",
                "4",
                "--shots",
                "0",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
    )
    renamed = tmp_path / "copy" / "gsm8k_test_renamed.jsonl"
    renamed.parent.mkdir()
    shutil.copy(data, renamed)
    renamed_examples = get_task("gsm8k").load(data=str(renamed), limit=4)
    metrics, _ = score(get_task("gsm8k"), renamed_examples, out.with_suffix(".jsonl"))
    assert metrics["accuracy"] == 1.0 and metrics["missing"] == 0
    # ids that older versions wrote (gsm8k-<file stem>-<i>) are read as positions
    old = tmp_path / "old.jsonl"
    old.write_text(
        "".join(json.dumps({"id": f"gsm8k-test-{i}", "output": e.solution}) + "\n" for i, e in enumerate(examples))
    )
    assert score(get_task("gsm8k"), renamed_examples, old)[0]["accuracy"] == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "q-17", "output": "#### 1"}) + "\n")
    with pytest.raises(SrlmError, match=r"ids not in the data, e.g. q-17 \(expected ids like '0' ... '3'\)"):
        score(get_task("gsm8k"), renamed_examples, bad)


# ----------------------------------------------------------------------------- NaN / Inf weights


def test_nonfinite_weights_are_named_at_load_and_refused_unless_allowed(tmp_path, ckpt, capsys, monkeypatch):
    model = load_model(ckpt)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
        model.model.norm.weight[1] = float("inf")
    bad = save(model, tmp_path / "nan", tokenizer=Tokenizer.from_dir(ckpt))
    capsys.readouterr()
    loaded = load_model(bad)
    err = capsys.readouterr().err
    assert "NaN or Inf values in 2 tensor(s)" in err and "model.layers.0.mlp.up_proj.weight" in err
    assert "model.norm.weight" in loaded.nonfinite_tensors

    assert srlm_main(["generate", str(bad), "--prompt", "Tom", "--max-new-tokens", "2"]) == 1
    one_error_line(
        capsys, f"{bad}: NaN or Inf values in tensor(s) model.layers.0.mlp.up_proj.weight", "--allow-nonfinite"
    )
    assert srlm_main(["generate", str(bad), "--prompt", "Tom", "--max-new-tokens", "2", "--allow-nonfinite"]) == 0

    argv = [
        str(bad),
        "--task",
        "synth-arith",
        "--limit",
        "1",
        "--max-new-tokens",
        "2",
        "--no-progress",
        "--out",
        str(tmp_path / "e.json"),
    ]
    assert srlm_main(["eval", *argv]) == 1
    one_error_line(capsys, "NaN or Inf values", "--allow-nonfinite")
    assert not (tmp_path / "e.json").exists()
    assert srlm_main(["eval", *argv, "--allow-nonfinite"]) == 0
