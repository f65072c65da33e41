"""`srlm run [RECIPE]`: a pipeline of stages from one YAML recipe, evaluated after every stage, with a scorecard.

A recipe (see `pipelines/default.yaml`, `pipelines/study-*.yaml`; parsed by `srlm.recipes.recipe`) names:
- `model`: a preset (random init, needs `tokenizer`) or a checkpoint: an HF folder, a .gguf file
  (converted once into OUT/init/) or a Hugging Face Hub id (`revision` picks a branch, tag or commit);
- `tokenizer`: a folder, or `{train: {vocab_size, examples}}` to train a BPE on the task's train problems;
- `task` / `task_options`: the data every stage draws from (SFT and KD conversations, GRPO prompts);
- `eval`: the held-out evaluation run after every stage (`n`, `batch_size`, `max_new_tokens`, `chat`,
  `data` for file-backed tasks; synthetic test problems are written to OUT/heldout.jsonl first);
- `defaults`: training options applied to every stage (dtype, threads, ...);
- `stages`: an ordered list of `{name, kind, config, from, model, chain}`. `kind` is pretrain, sft,
  kd, grpo (training, via `srlm.train.<kind>.run`) or eval (evaluate the current checkpoint only).
  A stage starts from the previous chained stage's checkpoint (`from: NAME` picks another,
  `from: model` the recipe's model, `model: PRESET` a fresh model of another size); `chain: false`
  keeps it off the main line (e.g. a teacher). In configs, `@NAME` means that stage's checkpoint.
- `vars`: values substituted for `${name}` in any string (set them with `--set NAME=VALUE`);
- `quick`: overrides merged under `--quick`, e.g. `{stages: {sft: {steps: 50}}, eval: {n: 100}}`.

Each stage writes OUT/NAME/ (the loop's checkpoints, metrics.jsonl, final/), then `done.json`;
each evaluation writes OUT/evals/NAME.json through the same code as `srlm eval`, on the saved
checkpoint, so `srlm eval` reproduces every number. The run ends with OUT/report.md, report.json
and plots (`srlm.recipes.report`).

Re-runs are honest: every artefact (tokenizer, initial models, held-out file, each stage, each
evaluation) records a fingerprint of everything that produced it -- its resolved settings and the
fingerprints of its inputs (a stage's starting checkpoint, teacher, tokenizer and data files).
Re-running skips what is unchanged and resumes an interrupted stage from its newest checkpoint; a
stage whose fingerprint changed is re-done, and with it everything downstream, and the runner says
why (`[sft] settings changed (steps 2 -> 4): re-running sft, kd, grpo`). The superseded stage
folder is kept as OUT/NAME.superseded until the next change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from srlm.atomic import atomic_folder, clean_temporaries, write_text_atomic
from srlm.errors import SrlmError
from srlm.recipes.recipe import _deep_merge

# ---------------------------------------------------------------------------------------------
# Fingerprints

# training options that change how a stage runs, not what it produces
NOT_RESULTS = {
    "save_every",
    "keep_last",
    "log_every",
    "resume",
    "num_threads",
    "progress",
    "device",
    "out_dir",
    "eval_every",
    "eval_tasks",
    "eval_limit",
}
INPUTS_FILE = "inputs.json"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tree_digest(path: str | Path) -> str:
    """A fingerprint of a file or folder made outside the run: names, sizes and modification times."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return _digest(
        [(str(f.relative_to(p)) if f != p else p.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    )


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaves; an input's reference ({fingerprint, name}) is one leaf, shown by its name."""
    if isinstance(obj, dict) and "fingerprint" in obj:
        return {prefix: obj.get("name") or obj["fingerprint"]}
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def describe_change(old: dict | None, new: dict) -> str:
    """`steps 2 -> 4, lr 0.001 -> 0.003` between two recorded settings; inputs by what made them."""
    if old is None:
        return "no record of the settings that made it"
    a, b = _flatten(old), _flatten(new)
    diffs = [
        f"{k} {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]
    return (
        ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "") if diffs else "inputs changed"
    )


def read_record(path: Path) -> dict | None:
    """The fingerprint record at `path` (a folder's inputs.json or a file's NAME.inputs.json), or None."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and "fingerprint" in rec else None


def write_record(path: Path, fingerprint: str, settings: dict, **extra: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        path, json.dumps({"fingerprint": fingerprint, "settings": settings, **extra}, indent=2, default=str) + "\n"
    )


# ---------------------------------------------------------------------------------------------
# Running


class Runner:
    def __init__(self, recipe: dict, out: str | Path, log=print):
        self.recipe = recipe
        self.out = Path(out)
        self.log = log
        self.task_name = recipe["task"]
        self.task_options = dict(recipe.get("task_options") or {})
        self.eval_cfg = {
            "n": 500,
            "batch_size": 64,
            "max_new_tokens": None,
            "chat": True,
            "data": None,
            **(recipe.get("eval") or {}),
        }
        self.seed = int(recipe.get("seed", 0))
        self.made: dict[str, dict] = {}  # path made by this run -> {"fingerprint", "name"}

    # -- fingerprints -------------------------------------------------------------------------
    def ref(self, path: str | Path) -> dict:
        """What stands for an input in a fingerprint: the fingerprint of what this run made there, or
        a digest of the file or folder given from outside."""
        key = str(Path(path).resolve())
        if key in self.made:
            return self.made[key]
        return {"fingerprint": tree_digest(path), "name": str(path)}

    def _made(self, path: Path, fingerprint: str, name: str) -> None:
        self.made[str(Path(path).resolve())] = {"fingerprint": fingerprint, "name": f"{name}#{fingerprint[:6]}"}

    def _with_refs(self, obj: Any) -> Any:
        """Settings with every path replaced by the fingerprint of what it holds."""
        if isinstance(obj, dict):
            return {k: self._with_refs(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._with_refs(v) for v in obj]
        if (
            isinstance(obj, str)
            and ("/" in obj or os.sep in obj)
            and (str(Path(obj).resolve()) in self.made or Path(obj).exists())
        ):
            return self.ref(obj)
        return obj

    def _fresh(self, what: str, path: Path, record_path: Path, fingerprint: str, settings: dict) -> bool:
        """True when `path` exists and was made from these settings; otherwise clears it, saying why."""
        if not path.exists():
            return False
        rec = read_record(record_path)
        if rec is not None and rec["fingerprint"] == fingerprint:
            return True
        self.log(
            f"[{what}] settings changed ({describe_change(rec and rec.get('settings'), settings)}): making it again"
        )
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        return False

    # -- tokenizer and starting model ------------------------------------------------------
    def _train_examples(self, limit: int | None = None):
        from srlm.data.tasks import get_task

        opts = dict(self.task_options)
        data = opts.pop("data", None)
        return get_task(self.task_name, **opts).load(split="train", data=data, limit=limit)

    def checkpoint_folder(self, spec: str) -> Path | None:
        """The local folder of checkpoint `spec`: a folder as it is, a Hub id downloaded, a .gguf converted once
        into OUT/init/; None when `spec` names no existing path nor a Hub id (a preset, or a mistake)."""
        from srlm.model.hub import is_hub_id, resolve

        if not Path(spec).exists() and not is_hub_id(spec):
            return None
        path = resolve(spec, self.recipe.get("revision"))
        if path.is_dir():
            return path
        folder = self.out / "init" / path.stem
        if not (folder / "config.json").is_file():
            from srlm.model import load, save

            t0 = time.perf_counter()
            model, tok = load(path)
            save(model, folder, tokenizer=tok)
            self.log(f"[model] converted {path} -> {folder} in {time.perf_counter() - t0:.1f}s")
        return folder

    def tokenizer_dir(self) -> Path:
        spec = self.recipe.get("tokenizer")
        model = self.recipe["model"]
        if spec is None:
            from srlm.model import PRESETS

            folder = self.checkpoint_folder(model)
            if folder is None and model not in PRESETS:
                raise SrlmError(f"model {model!r} is neither a checkpoint folder nor a preset ({', '.join(PRESETS)})")
            if folder is None:
                raise SrlmError(
                    f"model {model!r} is a preset: the recipe needs `tokenizer` (a folder, or "
                    f"{{train: {{vocab_size: N}}}} to train one)"
                )
            return folder
        if isinstance(spec, str):
            if not (Path(spec) / "tokenizer.json").is_file():
                raise SrlmError(f"tokenizer {spec}: no tokenizer.json there")
            return Path(spec)
        folder = self.out / "tokenizer"
        opts = spec.get("train") or {}
        settings = {"train": opts, "task": self.task_name, "task_options": self._with_refs(self.task_options)}
        fp = _digest(settings)
        self._made(folder, fp, "tokenizer")
        if (
            self._fresh("tokenizer", folder, folder / INPUTS_FILE, fp, settings)
            and (folder / "tokenizer.json").is_file()
        ):
            return folder
        from srlm.data.chat import example_to_messages
        from srlm.tokenizer import train_bpe

        t0 = time.perf_counter()
        exs = self._train_examples(limit=int(opts.get("examples", 3000)))
        texts = []
        for ex in exs:
            # role names too: the chat template writes them into every sequence ("assistant" was 8 tokens)
            msgs = example_to_messages(ex)
            texts.append("\n".join(f"{m['role']}\n{m['content']}" for m in msgs))
        tok = train_bpe(texts, int(opts.get("vocab_size", 512)))
        with atomic_folder(folder) as tmp:  # a kill mid-save must not leave a tokenizer.json without its config
            tok.save(tmp)
        write_record(folder / INPUTS_FILE, fp, settings)
        self.log(
            f"[tokenizer] trained BPE with {tok.vocab_size} ids on {len(texts)} problems "
            f"in {time.perf_counter() - t0:.1f}s -> {folder}"
        )
        return folder

    def initial_model(self, tok_dir: Path, preset_name: str, name: str, overrides: dict | None = None) -> Path:
        """A preset model (with `overrides` of its fields) saved once, seeded, so every later stage starts
        from a real folder."""
        folder = self.out / "init" / name
        settings = {
            "preset": preset_name,
            "overrides": overrides or {},
            "seed": self.seed,
            "tokenizer": self.ref(tok_dir),
        }
        fp = _digest(settings)
        self._made(folder, fp, f"init/{name}")
        if (
            self._fresh(f"init/{name}", folder, folder / INPUTS_FILE, fp, settings)
            and (folder / "config.json").is_file()
        ):
            return folder
        import torch

        from srlm.model import CausalLM, preset, save
        from srlm.tokenizer import Tokenizer

        tok = Tokenizer.from_dir(tok_dir)
        torch.manual_seed(self.seed)
        cfg = preset(
            preset_name,
            **{
                **(overrides or {}),
                "vocab_size": tok.vocab_size,
                "eos_token_id": tok.eos_token_id,
                "bos_token_id": tok.bos_token_id,
                "pad_token_id": tok.pad_token_id,
            },
        )
        save(CausalLM(cfg), folder, tokenizer=tok)
        write_record(folder / INPUTS_FILE, fp, settings)
        return folder

    def _start(self, spec: str, tok_dir: Path, stage_name: str, overrides: dict | None = None) -> Path:
        folder = self.checkpoint_folder(spec)
        if folder is not None:
            if overrides:
                raise SrlmError(
                    f"stage {stage_name!r}: model_overrides change a preset's shape; model {spec} is a "
                    f"checkpoint, whose shape is fixed"
                )
            if not (folder / "config.json").is_file():
                raise SrlmError(f"model {spec}: no config.json; not a checkpoint folder")
            return folder
        from srlm.model import PRESETS

        if spec not in PRESETS:
            raise SrlmError(
                f"stage {stage_name!r}: model {spec!r} is neither a checkpoint folder nor a preset "
                f"({', '.join(PRESETS)})"
            )
        if overrides:  # a reshaped preset gets its own folder, named after the stage that asked for it
            return self.initial_model(tok_dir, spec, f"{spec}-{stage_name}", overrides)
        return self.initial_model(tok_dir, spec, spec)

    # -- evaluation -------------------------------------------------------------------------
    def heldout(self) -> str | None:
        """The evaluation data file: the recipe's, or synthetic test problems written once."""
        if self.eval_cfg.get("data"):
            if not Path(self.eval_cfg["data"]).is_file():
                raise SrlmError(f"eval.data {self.eval_cfg['data']}: no such file")
            return self.eval_cfg["data"]
        if not self.task_name.startswith("synth-"):
            raise SrlmError(f"task {self.task_name}: set eval.data to the test file (e.g. GSM8K's test.jsonl)")
        path = self.out / "heldout.jsonl"
        opts = {k: v for k, v in self.task_options.items() if k not in ("n_train", "data")}
        settings = {"task": self.task_name, "task_options": opts, "n": int(self.eval_cfg["n"])}
        fp = _digest(settings)
        self._made(path, fp, "heldout")
        record = path.with_suffix(".inputs.json")
        if not self._fresh("heldout", path, record, fp, settings):
            from srlm.data.synthetic import save_jsonl
            from srlm.data.tasks import get_task

            exs = get_task(self.task_name, **opts).load(split="test", limit=int(self.eval_cfg["n"]))
            save_jsonl(exs, path)
            write_record(record, fp, settings)
        return str(path)

    def eval_command(self, checkpoint: Path, out_json: Path) -> str:
        """The `srlm eval` command that reproduces an evaluation of the run."""
        e = self.eval_cfg
        argv = [
            "srlm",
            "eval",
            str(checkpoint),
            "--task",
            self.task_name,
            "--data",
            self.heldout(),
            "--limit",
            str(e["n"]),
            "--batch-size",
            str(e["batch_size"]),
            "--out",
            str(out_json),
        ]
        if e.get("chat", True):
            argv.append("--chat")
        if e.get("max_new_tokens"):
            argv += ["--max-new-tokens", str(e["max_new_tokens"])]
        return " ".join(shlex.quote(a) for a in argv)

    def evaluate(self, name: str, checkpoint: Path) -> tuple[dict, float]:
        out_json = self.out / "evals" / f"{name}.json"
        record = out_json.with_suffix(".inputs.json")
        data = self.heldout()
        settings = {
            "checkpoint": self.ref(checkpoint),
            "task": self.task_name,
            "data": self.ref(data),
            "eval": {k: v for k, v in self.eval_cfg.items() if k != "data"},
        }
        fp = _digest(settings)
        if self._fresh(f"{name} eval", out_json, record, fp, settings):
            rec = read_record(record)
            return json.loads(out_json.read_text())["tasks"][self.task_name], float(rec.get("seconds", 0.0))
        from srlm.eval import run as eval_run

        e = self.eval_cfg
        t0 = time.perf_counter()
        result = eval_run.evaluate(
            checkpoint,
            self.task_name,
            data,
            limit=int(e["n"]),
            chat=bool(e.get("chat", True)),
            batch_size=int(e["batch_size"]),
            max_new_tokens=e.get("max_new_tokens"),
            progress=True,
        )
        results = result.to_json()
        results["config"] = {"command": self.eval_command(checkpoint, out_json)}
        eval_run.write_results(out_json, results, result.records)
        dt = time.perf_counter() - t0
        write_record(record, fp, settings, seconds=round(dt, 3))
        return results["tasks"][self.task_name], dt

    # -- planning: what each stage is made from ---------------------------------------------
    def stage_config(self, s: dict, start: Path, tok_dir: Path, done: dict[str, Path]) -> tuple[Any, Any]:
        from srlm.train.config import load_config
        from srlm.train.stage import stage_module

        mod = stage_module(s["kind"])
        cfg = _deep_merge(self.recipe.get("defaults") or {}, s.get("config") or {})
        text = json.dumps(cfg)
        for ref, path in done.items():
            text = text.replace(f"@{ref}", str(path))
        cfg = json.loads(text)
        cfg.update(
            out_dir=str(self.out / s["name"]), model=str(start), init_from=None, tokenizer=str(tok_dir), resume="auto"
        )
        if s.get("model"):
            cfg.pop("model_overrides", None)  # already applied to the stage's fresh model (see _start)
        cfg.setdefault("seed", self.seed)
        fields = set(mod.Config.__dataclass_fields__)
        cfg = mod.recipe_config(cfg, self.task_name, self.task_options)
        cfg = {k: v for k, v in cfg.items() if k in fields or k not in self.recipe.get("defaults", {})}
        config = load_config(mod.Config, None, cfg)
        return mod, config

    def plan(self, tok_dir: Path, base: Path) -> list[dict]:
        """Each stage with its starting checkpoint, its config and its fingerprint, before anything trains."""
        from srlm.train.config import to_dict

        current = base
        done: dict[str, Path] = {}
        plan = []
        for s in self.recipe["stages"]:
            name, frm = s["name"], s.get("from")
            start = (
                self._start(s["model"], tok_dir, name, (s.get("config") or {}).get("model_overrides"))
                if s.get("model")
                else base
                if frm == "model"
                else done[frm]
                if frm
                else current
            )
            step = {"s": s, "start": start, "mod": None, "config": None}
            if s["kind"] == "eval":
                ckpt = start
            else:
                step["mod"], step["config"] = self.stage_config(s, start, tok_dir, done)
                cfg = {k: v for k, v in to_dict(step["config"]).items() if k not in NOT_RESULTS}
                step["settings"] = {"kind": s["kind"], **self._with_refs(cfg)}
                step["fingerprint"] = _digest(step["settings"])
                ckpt = self.out / name / "final"
                self._made(ckpt, step["fingerprint"], f"@{name}")
            step["checkpoint"] = ckpt
            done[name] = ckpt
            if s.get("chain", True):
                current = ckpt
            plan.append(step)
        self._say_what_changed(plan)
        return plan

    def _say_what_changed(self, plan: list[dict]) -> None:
        changed = []
        for step in plan:
            folder = self.out / step["s"]["name"]
            if step.get("fingerprint") and folder.exists():
                rec = read_record(folder / INPUTS_FILE)
                if rec is None or rec["fingerprint"] != step["fingerprint"]:
                    changed.append((step, rec))
        told: set[str] = set()
        for i, (step, rec) in enumerate(changed):
            name = step["s"]["name"]
            if name in told:
                continue
            why = describe_change(rec and rec.get("settings"), step["settings"])
            rest = [st["s"]["name"] for st, _ in changed[i:]]
            told.update(rest)
            self.log(f"[{name}] settings changed ({why}): re-running {', '.join(rest)}")

    # -- running ------------------------------------------------------------------------------
    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        for folder in (self.out, self.out / "evals", self.out / "init"):  # what a killed run left half-written
            clean_temporaries(folder)
        t_all = time.perf_counter()
        (self.out / "recipe.yaml").write_text(
            yaml.safe_dump({k: v for k, v in self.recipe.items() if k != "_path"}, sort_keys=False)
        )
        t0 = time.perf_counter()
        tok_dir = self.tokenizer_dir()
        base = self._start(self.recipe["model"], tok_dir, "model")
        plan = self.plan(tok_dir, base)
        setup_s = time.perf_counter() - t0
        current = base
        stages_out: list[dict] = []
        for step in plan:
            s = step["s"]
            name, kind, ckpt = s["name"], s["kind"], step["checkpoint"]
            rec: dict[str, Any] = {
                "name": name,
                "kind": kind,
                "start": str(step["start"]),
                "chain": bool(s.get("chain", True)),
            }
            if kind != "eval":
                rec.update(self._train(step))
            if s.get("chain", True):
                current = ckpt
            rec["checkpoint"] = str(ckpt)
            if s.get("evaluate", True):
                out_json = self.out / "evals" / f"{name}.json"
                metrics, rec["eval_s"] = self.evaluate(name, ckpt)
                rec["eval"] = {self.task_name: metrics}
                rec["eval_records"] = str(out_json.with_suffix(".jsonl"))
                rec["eval_command"] = self.eval_command(ckpt, out_json)
            rec["wall_s"] = rec.get("train_s", 0.0) + rec.get("eval_s", 0.0)
            self.log(self._summary_line(rec))
            stages_out.append(rec)
        from srlm.machine import describe
        from srlm.recipes.report import write_report

        summary = {
            "recipe": self.recipe.get("name"),
            "description": self.recipe.get("description"),
            "task": self.task_name,
            "task_options": self.task_options,
            "eval": self.eval_cfg,
            "setup_s": setup_s,
            "stages": stages_out,
            "final": str(current),
            "machine": describe(),
            "this_run_wall_s": time.perf_counter() - t_all,
            "next": f"Chat with the result: `srlm chat {current}`",
        }
        paths = write_report(self.out, summary)
        final_link = self.out / "final"
        if current != final_link:
            if final_link.is_symlink():
                final_link.unlink()
            if not final_link.exists():
                try:
                    final_link.symlink_to(Path(current).resolve(), target_is_directory=True)
                except OSError:
                    pass
        self.log(f"report: {paths['md']}")
        self.log(f"chat with the result: srlm chat {self.out / 'final' if final_link.exists() else current}")
        return summary

    def _summary_line(self, rec: dict) -> str:
        from srlm.eval.intervals import wilson

        parts = []
        if rec["kind"] != "eval":
            how = "reused" if rec.get("reused") else f"{rec.get('train_s', 0):.0f} s"
            parts.append(f"{rec['kind']} {rec.get('steps')} steps ({how})")
        m = (rec.get("eval") or {}).get(self.task_name)
        if m and m.get("n"):
            lo, hi = wilson(round(m["accuracy"] * m["n"]), m["n"])
            parts.append(
                f"held-out accuracy {100 * m['accuracy']:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}, "
                f"n {m['n']}; eval {rec.get('eval_s', 0):.0f} s)"
            )
        return f"[{rec['name']}] " + "; ".join(parts)

    def _train(self, step: dict) -> dict:
        s, start, config, mod = step["s"], step["start"], step["config"], step["mod"]
        stage_dir = self.out / s["name"]
        marker = stage_dir / "done.json"
        rec = read_record(stage_dir / INPUTS_FILE)
        if stage_dir.exists() and (rec is None or rec["fingerprint"] != step["fingerprint"]):
            old = stage_dir.with_name(stage_dir.name + ".superseded")
            shutil.rmtree(old, ignore_errors=True)
            stage_dir.rename(old)
        if marker.is_file():
            info = json.loads(marker.read_text())
            self.log(f"[{s['name']}] finished earlier with the same settings ({info.get('steps')} steps); skipping")
            return {**info, "train_s": 0.0, "reused": True}
        if not Path(start).is_dir():
            raise SrlmError(
                f"stage {s['name']!r}: starting checkpoint {start} is missing; re-run the stage that "
                f"makes it or fix `from`"
            )
        write_record(stage_dir / INPUTS_FILE, step["fingerprint"], step["settings"])
        from srlm.train.loop import list_checkpoints

        ckpts = list_checkpoints(stage_dir)
        newest = int(json.loads((ckpts[-1] / "training_state.json").read_text())["step"]) if ckpts else 0
        t0 = time.perf_counter()
        if newest >= config.steps and (stage_dir / "final" / "config.json").is_file():
            # killed after its last checkpoint and final model, before done.json: nothing left to train
            result = {}
        else:
            what = f"resuming at step {newest} of {config.steps}" if newest else f"{config.steps} steps"
            self.log(f"[{s['name']}] {s['kind']}: {what} from {start}")
            result = mod.run(config)
        train_s = time.perf_counter() - t0
        info = {
            "steps": config.steps,
            "train_s": train_s,
            "log": str(stage_dir / "metrics.jsonl"),
            "fingerprint": step["fingerprint"],
            "notes": mod.report_notes(result, stage_dir),
        }
        write_text_atomic(marker, json.dumps(info, indent=2) + "\n")
        return info
