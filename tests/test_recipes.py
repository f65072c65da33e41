"""`srlm run`: the study recipes end to end on small random Qwen2 checkpoints, skip/resume, errors, the default."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from _train_fixtures import make_tokenizer
from srlm.errors import SrlmError
from srlm.model import CausalLM, preset, save
from srlm.recipes.recipe import builtin_recipes, load_recipe
from srlm.recipes.runner import Runner
from srlm.tokenizer import Tokenizer

SAMPLES = Path(__file__).resolve().parent / "data"
GSM8K = SAMPLES / "gsm8k" / "train_sample.jsonl"
STUDY = [r for r in builtin_recipes() if r.startswith("study-")]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A random Qwen2 student and a wider random Qwen2 teacher sharing one tokenizer."""
    root = tmp_path_factory.mktemp("ckpt")
    tok = Tokenizer.from_dir(make_tokenizer(root / "tok"))
    out = {}
    for name, width in (("student", 32), ("teacher", 48)):
        torch.manual_seed(width)
        cfg = preset(
            "qwen2.5-0.5b",
            vocab_size=tok.vocab_size,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=1024,
            eos_token_id=tok.eos_token_id,
            bos_token_id=None,
            tie_word_embeddings=True,
        )
        out[name] = save(CausalLM(cfg), root / name, tokenizer=tok)
    return out


def _study_sets(recipe_name, checkpoints):
    sets = [
        f"student={checkpoints['student']}",
        f"teacher={checkpoints['teacher']}",
        f"gsm8k_train={GSM8K}",
        f"gsm8k_test={GSM8K}",
        "eval.n=2",
        "eval.batch_size=2",
        "eval.max_new_tokens=6",
        "defaults.dtype=fp32",
        "defaults.batch_size=2",
        "defaults.grad_accum=1",
        "defaults.max_seq_len=96",
        "defaults.num_threads=1",
        "defaults.progress=false",
        "defaults.save_every=0",
        "defaults.gradient_checkpointing=false",
    ]
    recipe = load_recipe(recipe_name, sets)
    for s in recipe["stages"]:
        if s["kind"] == "eval":
            continue
        sets.append(f"{s['name']}.steps=2")
        if s["kind"] in ("sft", "kd"):
            sets += [f"{s['name']}.val_size=0", f"{s['name']}.data_limit=8"]
        if s["kind"] == "grpo":
            sets += [
                f"{s['name']}.batch_size=4",
                f"{s['name']}.grad_accum=1",
                f"{s['name']}.num_generations=2",
                f"{s['name']}.sampling.max_new_tokens=6",
                f"{s['name']}.num_prompts=4",
                f"{s['name']}.save_every=0",
            ]
    return sets


@pytest.mark.parametrize("name", STUDY)
def test_study_recipe_runs_end_to_end(name, checkpoints, tmp_path):
    recipe = load_recipe(name, _study_sets(name, checkpoints))
    summary = Runner(recipe, tmp_path / "run", log=lambda *a: None).run()
    stages = [s["name"] for s in summary["stages"]]
    assert stages == [s["name"] for s in recipe["stages"]] and stages[0] == "base"
    for s in summary["stages"]:
        assert "gsm8k" in s["eval"] and s["eval"]["gsm8k"]["n"] == 2
        assert (tmp_path / "run" / "evals" / f"{s['name']}.json").is_file()
        if s["kind"] != "eval":
            assert (tmp_path / "run" / s["name"] / "final" / "model.safetensors").is_file()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["recipe"] == name and (tmp_path / "run" / "report.md").is_file()
    if "lora" in name:
        assert (tmp_path / "run" / "sft" / "final" / "adapter").is_dir()


def test_rerun_skips_finished_stages_and_resumes_an_interrupted_one(tmp_path, monkeypatch):
    sets = [
        "eval.n=3",
        "eval.batch_size=3",
        "eval.max_new_tokens=4",
        "defaults.num_threads=1",
        "defaults.max_seq_len=128",
        "defaults.batch_size=4",
        "tokenizer.train.examples=200",
        "task_options.n_train=64",
        "teacher.steps=1",
        "sft.steps=4",
        "sft.save_every=2",
        "sft.keep_last=2",
        "kd.steps=1",
        "grpo.steps=1",
        "grpo.batch_size=4",
        "grpo.num_generations=2",
        "grpo.sampling.max_new_tokens=4",
        "grpo.num_prompts=4",
    ]
    for key in ("teacher", "sft", "kd"):
        sets.append(f"{key}.val_size=0")
    recipe = load_recipe("default", sets)
    out = tmp_path / "run"
    Runner(recipe, out, log=lambda *a: None).run()
    # interrupt `sft` after checkpoint-2: drop what came after it, and what depends on it
    sft = out / "sft"
    import shutil

    for p in (sft / "done.json", sft / "final", sft / "checkpoint-000004"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    assert (sft / "checkpoint-000002").is_dir()
    import srlm.train.loop as loop

    loaded, runs = [], []
    real_load = loop.Trainer._load
    monkeypatch.setattr(loop.Trainer, "_load", lambda self, ckpt: loaded.append(ckpt.name) or real_load(self, ckpt))
    real_run = loop.Trainer.run
    monkeypatch.setattr(loop.Trainer, "run", lambda self: runs.append(self.stage_name) or real_run(self))
    msgs = []
    Runner(recipe, out, log=msgs.append).run()
    assert runs == ["sft"] and loaded == ["checkpoint-000002"]
    assert any("resuming at step 2 of 4" in m for m in msgs)
    assert any("[kd] finished earlier" in m for m in msgs)
    steps = [json.loads(line)["step"] for line in (sft / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 4


def _tiny_default(*extra):
    sets = [
        "eval.n=3",
        "eval.batch_size=3",
        "eval.max_new_tokens=4",
        "defaults.num_threads=1",
        "defaults.max_seq_len=128",
        "defaults.batch_size=4",
        "tokenizer.train.examples=200",
        "task_options.n_train=64",
        "teacher.steps=1",
        "sft.steps=2",
        "kd.steps=1",
        "grpo.steps=1",
        "grpo.batch_size=4",
        "grpo.num_generations=2",
        "grpo.sampling.max_new_tokens=4",
        "grpo.num_prompts=4",
        "teacher.val_size=0",
        "sft.val_size=0",
        "kd.val_size=0",
        *extra,
    ]
    return load_recipe("default", sets)


def test_rerun_with_changed_settings_redoes_the_stage_and_what_follows(tmp_path, monkeypatch):
    out = tmp_path / "run"
    Runner(_tiny_default(), out, log=lambda *a: None).run()
    import srlm.eval.run as eval_run
    import srlm.train.loop as loop

    trained, evaluated = [], []
    real_run = loop.Trainer.run
    monkeypatch.setattr(loop.Trainer, "run", lambda self: trained.append(self.stage_name) or real_run(self))
    real_eval = eval_run.evaluate
    monkeypatch.setattr(
        eval_run,
        "evaluate",
        lambda ckpt, *a, **kw: (
            evaluated.append(Path(ckpt).parent.name if Path(ckpt).name == "final" else "base")
            or real_eval(ckpt, *a, **kw)
        ),
    )

    msgs = []
    summary = Runner(_tiny_default("sft.steps=4"), out, log=msgs.append).run()
    assert trained == ["sft", "kd", "grpo"]  # the changed stage and everything downstream of it
    assert evaluated == ["sft", "kd", "grpo"]  # upstream evaluations (teacher, base) are reused
    assert any(m.startswith("[sft] settings changed (steps 2 -> 4): re-running sft, kd, grpo") for m in msgs), msgs
    assert any(m.startswith("[teacher] finished earlier with the same settings") for m in msgs)
    # the report and recipe.yaml describe the same run
    report = json.loads((out / "report.json").read_text())
    recipe_yaml = yaml.safe_load((out / "recipe.yaml").read_text())
    sft_cfg = next(s for s in recipe_yaml["stages"] if s["name"] == "sft")["config"]
    assert sft_cfg["steps"] == 4
    assert {s["name"]: s.get("steps") for s in report["stages"]}["sft"] == 4
    assert [s["name"] for s in summary["stages"]] == ["teacher", "base", "sft", "kd", "grpo"]
    steps = [json.loads(line)["step"] for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4 and steps == sorted(set(steps))  # a fresh log, not the old run's appended to
    assert (out / "sft.superseded" / "done.json").is_file()
    md = (out / "report.md").read_text()
    assert "95% Wilson interval" in md and "change from stage to stage" in md and "| base -> sft |" in md
    assert [(c["from"], c["to"]) for c in report["changes"]["synth-gsm"]] == [
        ("base", "sft"),
        ("sft", "kd"),
        ("kd", "grpo"),
    ]

    # an unchanged re-run does nothing; a larger held-out set re-evaluates every stage, trains none
    trained.clear(), evaluated.clear()
    Runner(_tiny_default("sft.steps=4"), out, log=lambda *a: None).run()
    assert trained == [] and evaluated == []
    msgs.clear()
    summary = Runner(_tiny_default("sft.steps=4", "eval.n=6", "eval.batch_size=6"), out, log=msgs.append).run()
    assert trained == [] and evaluated == ["teacher", "base", "sft", "kd", "grpo"]
    assert all(s["eval"]["synth-gsm"]["n"] == 6 for s in summary["stages"])
    assert any(m.startswith("[heldout] settings changed (n 3 -> 6)") for m in msgs), msgs


def test_recipe_errors_are_clear(tmp_path):
    with pytest.raises(SrlmError, match="unknown recipe 'defualt'.*Did you mean 'default'"):
        load_recipe("defualt")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\ntokenizer: {train: {}}\ntask: synth-gsm\nstages:\n  - {name: a, kind: sfft}\n")
    with pytest.raises(SrlmError, match="unknown kind 'sfft'.*Did you mean 'sft'"):
        load_recipe(str(bad))
    bad.write_text("model: tiny\ntask: synth-gsm\nstages:\n  - {name: a, kind: sft, from: nothere}\n")
    with pytest.raises(SrlmError, match="starts from 'nothere'"):
        load_recipe(str(bad))
    bad.write_text("model: tiny\ntask: synth-gsm\nstages:\n  - {name: a, kind: kd, config: {teacher: '@t'}}\n")
    with pytest.raises(SrlmError, match="refers to @t"):
        load_recipe(str(bad))
    bad.write_text("model: /no/such/folder\ntask: synth-gsm\nstages:\n  - {name: a, kind: eval}\n")
    with pytest.raises(SrlmError, match="neither a checkpoint folder nor a preset"):
        Runner(load_recipe(str(bad)), tmp_path / "o", log=lambda *a: None).run()
    with pytest.raises(SrlmError, match="not a var"):
        load_recipe("default", ["nosuchthing=1"])


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured (AVX2 EPYC, 2 cores, 510 held-out problems): GRPO moved the hardest "
    "level d3 by +1.2 points (KD 31.2 -> GRPO 32.4), short of the +5 this test asks; see the README",
)
def test_default_pipeline_meets_its_targets(tmp_path):
    """The full built-in run (about 20 minutes on 2 quiet cores)."""
    summary = Runner(load_recipe("default"), tmp_path / "run").run()
    acc = {s["name"]: s["eval"]["synth-gsm"] for s in summary["stages"]}
    assert acc["sft"]["accuracy"] > acc["base"]["accuracy"] + 0.2
    assert acc["kd"]["accuracy"] > acc["sft"]["accuracy"]
    assert acc["grpo"]["accuracy@d3"] >= acc["kd"]["accuracy@d3"] + 0.05
    assert acc["grpo"]["accuracy@d1"] >= 0.9


def test_model_overrides_reshape_a_stage_preset_and_are_refused_for_folders(tmp_path):
    from srlm.train.config import TrainConfig
    from srlm.train.loop import build_model

    runner = Runner(load_recipe("default", ["tokenizer.train.examples=50"]), tmp_path / "run", log=lambda *a: None)
    tok_dir = runner.tokenizer_dir()
    folder = runner._start("tiny", tok_dir, "teacher", {"num_hidden_layers": 6})
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 6
    plain = runner._start("tiny", tok_dir, "sft")
    assert json.loads((plain / "config.json").read_text())["num_hidden_layers"] == 4
    with pytest.raises(SrlmError, match="model_overrides"):
        runner._start(str(folder), tok_dir, "x", {"num_hidden_layers": 2})
    with pytest.raises(SrlmError, match="model_overrides.*checkpoint folder"):
        build_model(TrainConfig(model=str(plain), tokenizer=str(tok_dir), model_overrides={"num_hidden_layers": 2}))


def test_real_model_recipe_runs_from_a_gguf(checkpoints, tmp_path):
    """smollm2-135m-synth end to end, with a small random model standing in for SmolLM2, given as a GGUF
    (converted once into OUT/init/, as a user's download of the real file would be)."""
    import srlm
    from srlm.model.gguf import export

    model, tok = srlm.load(checkpoints["student"])
    gguf = export(model, tok, tmp_path / "student.gguf", "f32")
    sets = [
        f"smollm2={gguf}",
        "eval.n=2",
        "eval.batch_size=2",
        "eval.max_new_tokens=6",
        "defaults.num_threads=1",
        "defaults.max_seq_len=96",
        "defaults.save_every=0",
        "sft.steps=2",
        "sft.batch_size=2",
        "grpo.steps=1",
        "grpo.batch_size=4",
        "grpo.num_generations=2",
        "grpo.sampling.max_new_tokens=6",
        "grpo.num_prompts=4",
    ]
    summary = Runner(load_recipe("smollm2-135m-synth", sets), tmp_path / "run", log=lambda *a: None).run()
    assert [s["name"] for s in summary["stages"]] == ["instruct", "sft", "grpo"]
    assert summary["stages"][0]["start"] == str(tmp_path / "run" / "init" / "student")
    assert (tmp_path / "run" / "grpo" / "final" / "adapter" / "adapter_config.json").is_file()
