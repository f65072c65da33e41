"""Fault injection: what a kill, a torn write, a damaged checkpoint, a full disk or a read-only folder costs.

The kills are real SIGKILLs: a run goes into a forked child that counts its file-system events
(every os.replace, rmtree, fsync, torch.save, safetensors save, write_text, tokenizer save and
metrics append) and SIGKILLs itself at the k-th one, after writing half of the file when the point
is a tear. Points are drawn by seed from an uninterrupted run's event trace, at least one inside
every save (each checkpoint and final/) and at least 10 per stage kind (SFT, KD, GRPO, `srlm run`);
some runs are killed again while resuming. After the last resume a run must have the same losses
and final weights as the uninterrupted one, the same checkpoints, each verifiable and loadable, and
no temporary anywhere.

Full disks use a small tmpfs and read-only folders a read-only tmpfs (`mount`, which needs root:
root ignores file modes, so chmod cannot make a folder read-only for it); without mount rights those
tests are skipped, except read-only ones run as a non-root user, which use chmod.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

import srlm.atomic
from _train_fixtures import TINY_MODEL, make_tokenizer, sft_overrides
from srlm.atomic import is_temporary
from srlm.errors import SrlmError
from srlm.model import CausalLM, load_model, preset, save
from srlm.tokenizer import Tokenizer
from srlm.train import checkpointing
from srlm.train.checkpointing import list_checkpoints, verify
from srlm.train.config import load_config

POINTS = 10  # kill points per stage kind


# ----------------------------------------------------------------------------- the killer


class Faults:
    """Counts the file-system events of the process it is installed in, and SIGKILLs it at event `kill_at`
    (first writing half of the file when `tear` and the event is a write)."""

    def __init__(self, kill_at: int | None = None, tear: bool = False):
        self.kill_at, self.tear, self.trace = kill_at, tear, []

    def event(self, label: str, torn=None):
        self.trace.append(label)
        if self.kill_at is not None and len(self.trace) == self.kill_at:
            if self.tear and torn is not None:
                torn()
            os.kill(os.getpid(), signal.SIGKILL)

    def install(self, setattr_):
        import pathlib

        import srlm.model.checkpoint as ckpt_mod
        import srlm.tokenizer as tok_mod

        ev = self.event
        real_replace, real_rmtree = os.replace, shutil.rmtree
        real_torch_save, real_save_file = torch.save, ckpt_mod.save_file
        real_write_text, real_tok_save = pathlib.Path.write_text, tok_mod.Tokenizer.save
        real_append = checkpointing.append_metrics

        def replace(src, dst, *a, **k):
            ev(f"replace {dst}")
            return real_replace(src, dst, *a, **k)

        def rmtree(path, *a, **k):
            ev(f"rmtree {path}")
            return real_rmtree(path, *a, **k)

        def fsync_path(path):  # a kill point; not flushed: a SIGKILL loses no written data, and flushing is slow
            ev(f"fsync {path}")

        def torch_save(obj, f, *a, **k):
            def torn():
                real_torch_save(obj, f, *a, **k)
                f.flush()
                f.truncate(f.tell() // 2)
                f.flush()

            ev(f"torch.save {getattr(f, 'name', f)}", torn)
            return real_torch_save(obj, f, *a, **k)

        def save_file(tensors, filename, *a, **k):
            def torn():
                real_save_file(tensors, filename, *a, **k)
                os.truncate(filename, os.path.getsize(filename) // 2)

            ev(f"save_file {filename}", torn)
            return real_save_file(tensors, filename, *a, **k)

        def write_text(self, data, *a, **k):
            ev(f"write_text {self}", lambda: real_write_text(self, data[: len(data) // 2], *a, **k))
            return real_write_text(self, data, *a, **k)

        def tok_save(self, path):
            ev(f"tokenizer {path}", lambda: self.backend.save(str(Path(path) / "tokenizer.json")))
            return real_tok_save(self, path)

        def append_metrics(path, record):
            def torn():
                with open(path, "a") as f:
                    line = json.dumps(record)
                    f.write(line[: len(line) // 2])

            ev(f"metrics {path}", torn)
            return real_append(path, record)

        setattr_(os, "replace", replace)
        setattr_(shutil, "rmtree", rmtree)
        setattr_(srlm.atomic, "fsync_path", fsync_path)
        setattr_(torch, "save", torch_save)
        setattr_(ckpt_mod, "save_file", save_file)
        setattr_(pathlib.Path, "write_text", write_text)
        setattr_(tok_mod.Tokenizer, "save", tok_save)
        setattr_(checkpointing, "append_metrics", append_metrics)


def trace_of(fn) -> list[str]:
    """The event trace of `fn()` run here, uninterrupted."""
    faults = Faults()
    with pytest.MonkeyPatch.context() as mp:
        faults.install(mp.setattr)
        fn()
    return faults.trace


def resumed(fn) -> None:
    """`fn()` run here to the end, without flushing to disk (as the killed runs; see `Faults`)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(srlm.atomic, "fsync_path", lambda path: None)
        fn()


def run_killed(fn, kill_at: int, tear: bool) -> bool:
    """Run `fn()` in a forked child killed at event `kill_at`; True when it was killed, False when it finished."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            Faults(kill_at, tear).install(lambda obj, name, value: setattr(obj, name, value))
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the child run failed (its traceback is in the captured stderr)"
    return False


# a save: a checkpoint or final/ of a run folder, or an evaluation's results
_SAVE = re.compile(r"(\w+)/\.?(checkpoint-\d+|final)\b|(evals)/\.?([\w-]+)\.json")


def kill_points(trace: list[str], n: int, seed: int) -> list[tuple[int, bool, bool]]:
    """(event, tear, kill the resume too) triples: one point inside every save, the rest anywhere."""
    rng = np.random.default_rng(seed)
    saves: dict[tuple[str, str], list[int]] = {}
    for i, label in enumerate(trace, 1):
        m = _SAVE.search(label)
        if m and not label.startswith("metrics"):
            saves.setdefault(m.groups(), []).append(i)
    points = {int(rng.choice(idx)) for idx in saves.values()}
    while len(points) < max(n, len(saves)):
        points.add(int(rng.integers(1, len(trace) + 1)))
    return [(k, bool(rng.random() < 0.5), bool(rng.random() < 0.3)) for k in sorted(points)]


# ----------------------------------------------------------------------------- what must hold


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_temporary(p.name)]


def assert_loadable(out: Path) -> None:
    """Every checkpoint a later run could pick matches its manifest and loads; so does final/."""
    for ckpt in list_checkpoints(out):
        verify(ckpt)
        load_model(ckpt)
    if (out / "final").exists():
        verify(out / "final", need_state=False)
        load_model(out / "final")


def losses(out: Path) -> dict[int, float]:
    steps: dict[int, float] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            assert r["step"] not in steps, f"step {r['step']} logged twice in {out}"
            steps[r["step"]] = r["loss"]
    return steps


def assert_same_run(out: Path, ref: Path, set_aside: int = 0) -> None:
    want, got = losses(ref), losses(out)
    assert sorted(got) == sorted(want)
    for s in want:
        assert got[s] == pytest.approx(want[s], rel=1e-5, abs=1e-6), (out, s)
    a, b = load_model(ref / "final").state_dict(), load_model(out / "final").state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    assert [p.name for p in list_checkpoints(out)] == [p.name for p in list_checkpoints(ref)]
    assert_loadable(out)
    assert not temporaries(out), temporaries(out)
    assert len(list(out.glob("*.damaged*"))) == set_aside  # a kill never damages a checkpoint


def kill_and_resume(train, ref: Path, root: Path, seed: int) -> int:
    """Kill `train(out)` at seeded points of its trace, resume each to the end, compare; returns the kills."""
    trace = trace_of(lambda: train(ref))
    kills = 0
    for k, tear, again in kill_points(trace, POINTS, seed):
        out = root / f"kill-{k}"
        assert run_killed(lambda: train(out), k, tear), f"event {k} of {len(trace)} was not reached"
        kills += 1
        assert_loadable(out)
        if again and run_killed(lambda: train(out), int(np.random.default_rng(k).integers(1, len(trace) // 2)), tear):
            kills += 1
            assert_loadable(out)
        resumed(lambda: train(out))
        assert_same_run(out, ref)
    return kills


# ----------------------------------------------------------------------------- the stages


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def sft_train(tok_dir, **extra):
    from srlm.train.sft import SFTConfig, run

    def train(out):
        run(
            load_config(
                SFTConfig,
                None,
                sft_overrides(
                    out,
                    tok_dir,
                    **{
                        "steps": 8,
                        "save_every": 2,
                        "keep_last": 2,
                        "resume": "auto",
                        "lora": "{enabled: false}",
                        **extra,
                    },
                ),
            )
        )

    return train


def test_sft_killed_anywhere_resumes_to_the_same_run(tmp_path, tok_dir):
    assert kill_and_resume(sft_train(tok_dir), tmp_path / "ref", tmp_path, seed=1) >= POINTS


def test_kd_killed_anywhere_resumes_to_the_same_run(tmp_path, tok_dir):
    from srlm.train.kd import KDConfig, run

    tok = Tokenizer.from_dir(tok_dir)
    torch.manual_seed(1)
    teacher = save(
        CausalLM(
            preset(
                "tiny",
                vocab_size=tok.vocab_size,
                hidden_size=48,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                eos_token_id=tok.eos_token_id,
            )
        ),
        tmp_path / "teacher",
        tokenizer=tok,
    )

    def train(out):
        run(
            load_config(
                KDConfig,
                None,
                [
                    f"{k}={v}"
                    for k, v in {
                        "out_dir": out,
                        "tokenizer": tok_dir,
                        "model": "tiny",
                        "model_overrides": TINY_MODEL,
                        "teacher": teacher,
                        "data": "[synth-arith]",
                        "data_options": "{n_train: 32, difficulties: [1]}",
                        "steps": 6,
                        "save_every": 2,
                        "keep_last": 1,
                        "batch_size": 4,
                        "lr": 3e-3,
                        "dtype": "fp32",
                        "num_threads": 1,
                        "log_every": 3,
                        "progress": "false",
                        "max_seq_len": 128,
                        "resume": "auto",
                    }.items()
                ],
            )
        )

    assert kill_and_resume(train, tmp_path / "ref", tmp_path, seed=2) >= POINTS


def test_grpo_killed_anywhere_resumes_to_the_same_run(tmp_path, tok_dir, monkeypatch):
    import srlm.train.grpo as grpo

    # a reward that varies on a random model, so the updates are not all zero
    monkeypatch.setitem(grpo.REWARDS, "parity", lambda text, example, task: float(len(text) % 2))

    def train(out):
        grpo.run(
            load_config(
                grpo.GRPOConfig,
                None,
                [
                    f"{k}={v}"
                    for k, v in {
                        "out_dir": out,
                        "tokenizer": tok_dir,
                        "model": "tiny",
                        "model_overrides": TINY_MODEL,
                        "task": "synth-arith",
                        "task_options": "{difficulties: [1]}",
                        "num_prompts": 8,
                        "steps": 6,
                        "batch_size": 4,
                        "num_generations": 2,
                        "sampling.max_new_tokens": 8,
                        "num_iterations": 2,
                        "save_every": 3,
                        "keep_last": 2,
                        "rewards": "{parity: 1.0, correct: 1.0}",
                        "dtype": "fp32",
                        "num_threads": 1,
                        "progress": "false",
                        "lr": 1e-3,
                        "resume": "auto",
                    }.items()
                ],
            )
        )

    assert kill_and_resume(train, tmp_path / "ref", tmp_path, seed=3) >= POINTS


RECIPE = """
name: faults
model: {student}
task: synth-arith
task_options: {{difficulties: [1], n_train: 32}}
eval: {{n: 3, batch_size: 3, max_new_tokens: 6, chat: true}}
defaults: {{dtype: fp32, batch_size: 4, max_seq_len: 96, log_every: 1, save_every: 2, keep_last: 1,
            progress: false, num_threads: 1}}
stages:
  - {{name: sft, kind: sft, config: {{steps: 4, lr: 3.0e-3, val_size: 0}}}}
  - {{name: kd, kind: kd, config: {{steps: 2, lr: 1.0e-3, teacher: "@sft", val_size: 0}}}}
  - {{name: grpo, kind: grpo, config: {{steps: 2, num_generations: 2, sampling: {{max_new_tokens: 6}},
                                        num_prompts: 4}}}}
"""


def test_srlm_run_killed_anywhere_resumes_to_the_same_results(tmp_path, tok_dir, monkeypatch):
    import srlm.recipes.report
    from srlm.recipes.recipe import load_recipe
    from srlm.recipes.runner import Runner

    # drawing the PNG plots is most of a short run's time and writes nothing a later run reads
    monkeypatch.setattr(srlm.recipes.report, "_plots", lambda *a, **k: [])

    tok = Tokenizer.from_dir(tok_dir)
    torch.manual_seed(0)
    student = save(
        CausalLM(
            preset(
                "tiny",
                vocab_size=tok.vocab_size,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                eos_token_id=tok.eos_token_id,
            )
        ),
        tmp_path / "student",
        tokenizer=tok,
    )
    path = tmp_path / "faults.yaml"
    path.write_text(RECIPE.format(student=student))
    recipe = load_recipe(str(path))

    def run(out):
        Runner(recipe, out, log=lambda *a: None).run()

    ref = tmp_path / "ref"
    trace = trace_of(lambda: run(ref))
    kills = 0
    for k, tear, again in kill_points(trace, POINTS, seed=4):
        out = tmp_path / f"kill-{k}"
        assert run_killed(lambda: run(out), k, tear)
        kills += 1
        for stage in ("sft", "kd", "grpo"):
            assert_loadable(out / stage)
        if again and run_killed(lambda: run(out), int(np.random.default_rng(k).integers(1, len(trace) // 2)), tear):
            kills += 1
        resumed(lambda: run(out))
        for stage in ("sft", "kd", "grpo"):
            assert_same_run(out / stage, ref / stage)
        for stage in ("sft", "kd", "grpo"):
            a = json.loads((ref / "evals" / f"{stage}.json").read_text())["tasks"]
            assert json.loads((out / "evals" / f"{stage}.json").read_text())["tasks"] == a
        assert (out / "report.md").is_file() and not temporaries(out)
    assert kills >= POINTS


# ----------------------------------------------------------------------------- single faults, one each


def test_kill_inside_the_final_save_resumes_by_writing_final(tmp_path, tok_dir, capfd):
    train = sft_train(tok_dir)
    trace = trace_of(lambda: train(tmp_path / "ref"))
    inside_final = next(
        i for i, label in enumerate(trace, 1) if label.startswith("save_file") and "/.final.tmp-" in label
    )
    out = tmp_path / "run"
    assert run_killed(lambda: train(out), inside_final, tear=True)
    assert not (out / "final").exists() and list_checkpoints(out)[-1].name == "checkpoint-000008"
    assert [p.name for p in temporaries(out)] and all(p.name.startswith(".final.tmp-") for p in temporaries(out))
    capfd.readouterr()
    train(out)  # resume=auto: at the last step, only final/ is written
    assert "checkpoint-000008 is at the last step (8)" in capfd.readouterr().err
    assert_same_run(out, tmp_path / "ref")


def test_leftover_temporaries_of_every_naming_scheme_are_cleaned(tmp_path, tok_dir):
    train = sft_train(tok_dir, steps=4)
    out = tmp_path / "run"
    train(out)
    legacy = [
        "..checkpoint-000004.tmp-123.tmp-ab_cd9",
        ".checkpoint-000006.tmp-77",
        ".final.old-88",
        ".final.tmp-12-a1b2c3",
        ".metrics.jsonl.tmp-5-ffffff",
    ]
    for name in legacy:
        (out / name).mkdir() if "metrics" not in name else (out / name).write_text("x")
    # an interrupted swap: the old copy is complete and the new one never landed
    os.replace(out / "checkpoint-000004", out / ".checkpoint-000004.old-99-abcdef")
    assert sorted(p.name for p in temporaries(out)) == sorted(legacy + [".checkpoint-000004.old-99-abcdef"])
    sft_train(tok_dir, steps=6)(out)
    assert not temporaries(out)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-000004", "checkpoint-000006"]
    # a save inside a training run no longer nests temporaries (srlm.save within a checkpoint's temporary)
    trace = trace_of(lambda: sft_train(tok_dir, steps=2)(tmp_path / "t"))
    assert not [t for t in trace if "/.." in t or ".tmp-" in t.split("/")[-1] and t.count(".tmp-") > 1]


def test_torn_last_metrics_line_is_dropped_and_the_log_rewritten(tmp_path, tok_dir, capfd):
    train = sft_train(tok_dir)
    trace = trace_of(lambda: train(tmp_path / "ref"))
    step_7 = [i for i, t in enumerate(trace, 1) if t.startswith("metrics")][6]
    out = tmp_path / "run"
    assert run_killed(lambda: train(out), step_7, tear=True)  # half of step 7's record written
    log = out / "metrics.jsonl"
    torn = log.read_text().splitlines()[-1]
    assert torn.startswith('{"step": 7') and not torn.endswith("}")
    capfd.readouterr()
    train(out)
    assert "metrics.jsonl: dropped its torn last line" in capfd.readouterr().err
    assert all(json.loads(line) for line in log.read_text().splitlines())
    assert_same_run(out, tmp_path / "ref")


def test_a_fresh_run_starts_a_fresh_metrics_log(tmp_path, tok_dir, capfd):
    train = sft_train(tok_dir, steps=4, save_every=0)
    out = tmp_path / "run"
    trace = trace_of(lambda: train(tmp_path / "ref"))
    third_step = [i for i, t in enumerate(trace, 1) if t.startswith("metrics")][2]
    assert run_killed(lambda: train(out), third_step, tear=False)  # killed before any checkpoint
    assert sorted(losses(out)) == [1, 2]
    capfd.readouterr()
    from srlm.train.sft import SFTConfig, run

    run(load_config(SFTConfig, None, sft_overrides(out, tok_dir, steps=4, save_every=0, lora="{enabled: false}")))
    assert "the old log is now" in capfd.readouterr().err
    assert sorted(losses(out)) == [1, 2, 3, 4]  # not 1, 2, 1, 2, 3, 4
    assert sorted(json.loads(line)["step"] for line in (out / "metrics.previous-1.jsonl").read_text().splitlines()) == [
        1,
        2,
    ]
    assert_same_run(out, tmp_path / "ref")


def test_a_resumed_run_truncates_the_log_to_its_checkpoint(tmp_path, tok_dir):
    out = tmp_path / "run"
    train = sft_train(tok_dir)
    trace = trace_of(lambda: train(tmp_path / "ref"))
    after_step_7 = [i for i, t in enumerate(trace, 1) if t.startswith("metrics")][7]  # logging step 8
    assert run_killed(lambda: train(out), after_step_7, tear=False)
    assert sorted(losses(out)) == list(range(1, 8))  # steps 7 and 8 come after checkpoint-6
    train(out)
    assert_same_run(out, tmp_path / "ref")


def test_steps_logged_in_a_window_survive_a_resume(tmp_path, tok_dir):
    """With log_every=3 and save_every=2, the loss of step 4 must be logged by the time checkpoint-4 exists."""
    train = sft_train(tok_dir, log_every=3)
    trace = trace_of(lambda: train(tmp_path / "ref"))
    after_ckpt_4 = next(
        i for i, t in enumerate(trace, 1) if t.startswith("replace") and t.endswith("/checkpoint-000004")
    )
    out = tmp_path / "run"
    assert run_killed(lambda: train(out), after_ckpt_4 + 1, tear=False)
    assert sorted(losses(out)) == [1, 2, 3, 4]
    train(out)
    assert_same_run(out, tmp_path / "ref")


@pytest.mark.parametrize(
    "damage",
    [
        "truncate training_state.pt",
        "truncate model.safetensors",
        "flip a byte",
        "truncate training_state.pt of an old checkpoint without checksums",
    ],
)
def test_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, tok_dir, capfd, damage):
    train = sft_train(tok_dir, keep_last=1)
    train(tmp_path / "ref")
    out = tmp_path / "run"
    sft_train(tok_dir, keep_last=2)(out)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-000006", "checkpoint-000008"]
    newest = out / "checkpoint-000008"
    shutil.rmtree(out / "final")
    if damage.startswith("truncate"):
        name = damage.split()[1]
        os.truncate(newest / name, (newest / name).stat().st_size // 2)
    else:
        data = bytearray((newest / "model.safetensors").read_bytes())
        data[-5] ^= 0xFF
        (newest / "model.safetensors").write_bytes(bytes(data))
    if "old checkpoint" in damage:
        meta = json.loads((newest / "training_state.json").read_text())
        del meta["files"]
        (newest / "training_state.json").write_text(json.dumps(meta))
    capfd.readouterr()
    train(out)
    err = capfd.readouterr().err
    assert "checkpoint-000008 is damaged" in err and "resuming from checkpoint-000006" in err
    assert (out / "checkpoint-000008.damaged").is_dir()  # moved aside, not deleted
    assert_same_run(out, tmp_path / "ref", set_aside=1)


def test_the_only_checkpoint_damaged_is_an_error_and_nothing_is_removed(tmp_path, tok_dir):
    train = sft_train(tok_dir, steps=2, keep_last=1)
    out = tmp_path / "run"
    train(out)
    shutil.rmtree(out / "final")
    state = out / "checkpoint-000002" / "training_state.pt"
    os.truncate(state, 10)
    with pytest.raises(SrlmError, match=r"no intact checkpoint.*checkpoint-000002: training_state.pt has 10 bytes"):
        sft_train(tok_dir, steps=4, keep_last=1)(out)
    assert state.stat().st_size == 10 and [p.name for p in list_checkpoints(out)] == ["checkpoint-000002"]
    with pytest.raises(SrlmError, match="resume=.*checkpoint-000002: the checkpoint is damaged"):
        sft_train(tok_dir, steps=4, resume=str(out / "checkpoint-000002"))(out)


def test_atomic_saves_flush_files_and_folders_before_the_rename(tmp_path, monkeypatch):
    order = []
    real_fsync, real_replace = srlm.atomic.fsync_path, os.replace
    monkeypatch.setattr(srlm.atomic, "fsync_path", lambda p: order.append(("fsync", Path(p))) or real_fsync(p))
    monkeypatch.setattr(os, "replace", lambda a, b: order.append(("replace", Path(a), Path(b))) or real_replace(a, b))
    save(CausalLM(preset("tiny", vocab_size=64)), tmp_path / "ck")
    renames = [i for i, o in enumerate(order) if o[0] == "replace"]
    assert len(renames) == 1
    tmp = order[renames[0]][1]
    flushed = {o[1] for o in order[: renames[0]]}
    assert {tmp / "config.json", tmp / "model.safetensors", tmp / "generation_config.json", tmp} <= flushed
    assert order[renames[0] + 1] == ("fsync", tmp_path)  # the rename itself is made durable


# ----------------------------------------------------------------------------- full disks, read-only folders


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return r.returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A function giving a tmpfs of a given size in bytes; skipped where mount is not allowed."""
    mounted = []

    def make(size: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        if not _mount_tmpfs(folder, str(size)):
            pytest.skip("mounting a tmpfs needs root and mount rights")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        _umount(folder)


@pytest.fixture
def read_only(tmp_path):
    """A function making a folder holding `fill(folder)`'s files read-only: a read-only tmpfs as root
    (root writes through file modes), chmod otherwise."""
    mounted = []

    def make(name: str, fill) -> Path:
        mount = tmp_path / f"ro-{name}"
        folder = mount / name
        if os.geteuid() != 0:
            folder.mkdir(parents=True)
            fill(folder)
            for p in [mount, *mount.rglob("*")]:
                p.chmod(0o555 if p.is_dir() else 0o444)
            return folder
        if not _mount_tmpfs(mount, "64m"):
            pytest.skip("a read-only folder for root needs a read-only mount, and mount is not allowed here")
        mounted.append(mount)
        folder.mkdir()
        fill(folder)
        r = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot remount read-only: {r.stderr.decode().strip()}")
        return folder

    yield make
    for mount in mounted:
        _umount(mount)


def test_full_disk_during_a_save_names_it_and_keeps_the_previous_checkpoint(tmp_path, tok_dir, small_disk):
    train = sft_train(tok_dir, steps=4, keep_last=1)
    train(tmp_path / "ref")
    ckpt_bytes = sum(f.stat().st_size for f in (tmp_path / "ref" / "checkpoint-000004").rglob("*") if f.is_file())
    disk = small_disk(int(ckpt_bytes * 1.6))  # room for one checkpoint and the logs, not for a second beside it
    out = disk / "run"
    with pytest.raises(
        SrlmError,
        match=r"no space left on device while saving .*run/checkpoint-000004 \(.* MiB had been written\); "
        r"removed the partial copy; the newest checkpoint, checkpoint-000002, is intact",
    ):
        train(out)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-000002"]
    assert not temporaries(out)  # the partial folder is gone, not filling the disk
    assert_loadable(out)


def test_unwritable_output_folder_fails_before_training(tmp_path, tok_dir, read_only, monkeypatch):
    from srlm.train import sft

    folder = read_only("ro", lambda f: None)
    monkeypatch.setattr(sft.SFTStage, "loss", lambda *a: pytest.fail("trained before checking out_dir"))
    with pytest.raises(SrlmError, match=r"ro/run: cannot write checkpoints and metrics there"):
        sft_train(tok_dir, steps=2)(folder / "run")


def test_eval_on_a_read_only_checkpoint_checks_first_and_writes_elsewhere(
    tmp_path, tok_dir, read_only, monkeypatch, capsys
):
    import argparse

    from srlm.commands import eval as eval_cli
    from srlm.eval import run as eval_run

    tok = Tokenizer.from_dir(tok_dir)
    ckpt = read_only(
        "ckpt",
        lambda f: save(
            CausalLM(
                preset(
                    "tiny",
                    vocab_size=tok.vocab_size,
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                )
            ),
            f,
            tokenizer=tok,
        ),
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    p = argparse.ArgumentParser()
    eval_cli.add_arguments(p)
    argv = [str(ckpt), "--task", "synth-arith", "--limit", "2", "--max-new-tokens", "4", "--no-progress"]
    # an --out that cannot be written is refused before the model is even loaded
    monkeypatch.setattr(eval_run, "make_backend", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    with pytest.raises(SrlmError, match="cannot write --out results"):
        eval_cli.run(p.parse_args(argv + ["--out", str(ckpt / "m.json")]))
    monkeypatch.undo()
    monkeypatch.chdir(work)
    for _ in range(2):  # the second run keeps the first's results
        eval_cli.run(p.parse_args(argv))
    out = capsys.readouterr()
    assert "synth-arith" in out.out and "is not writable; results will go to" in out.err
    names = sorted(f.name for f in work.iterdir())
    assert names == [
        "eval-ckpt-synth-arith.1.json",
        "eval-ckpt-synth-arith.1.jsonl",
        "eval-ckpt-synth-arith.json",
        "eval-ckpt-synth-arith.jsonl",
    ]
    assert json.loads((work / "eval-ckpt-synth-arith.json").read_text())["tasks"]["synth-arith"]["n"] == 2
