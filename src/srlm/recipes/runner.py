"""`srlm run [RECIPE]`: a pipeline of stages from one YAML recipe, evaluated after every stage, with a scorecard.

A recipe (see `default.yaml`, `study-*.yaml` beside this file) names:
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
checkpoint, so `srlm eval` reproduces every number. Re-running skips finished stages and
evaluations and resumes an interrupted stage from its newest checkpoint. The run ends with
OUT/report.md, report.json and plots (`srlm.recipes.report`).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import os
import platform
import re
import shlex
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from srlm.errors import SrlmError

TRAIN_KINDS = ("pretrain", "sft", "kd", "grpo")
KINDS = TRAIN_KINDS + ("eval",)
RECIPE_KEYS = {"name", "description", "model", "revision", "tokenizer", "task", "task_options", "eval", "defaults",
               "stages", "vars", "quick", "seed"}
STAGE_KEYS = {"name", "kind", "config", "from", "model", "chain", "evaluate"}


# ---------------------------------------------------------------------------------------------
# Recipes: finding, reading, overriding


def builtin_recipes() -> list[str]:
    """Recipe names beside this file (a recipe has `stages:`; the other YAMLs are single-stage configs)."""
    return sorted(p.name[:-5] for p in resources.files("srlm.recipes").iterdir()
                  if p.name.endswith(".yaml") and re.search(r"^stages:", p.read_text(encoding="utf-8"), re.M))


def find_recipe(name: str) -> Path:
    p = Path(name)
    if p.is_file():
        return p
    if p.suffix in (".yaml", ".yml") or "/" in name:
        raise SrlmError(f"recipe {name}: no such file")
    candidate = resources.files("srlm.recipes") / f"{name}.yaml"
    if not candidate.is_file():
        known = builtin_recipes()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise SrlmError(f"unknown recipe {name!r}.{hint} Built-in recipes: {', '.join(known)}; or give a YAML path")
    return Path(str(candidate))


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _substitute(obj: Any, env: dict[str, Any], where: str) -> Any:
    if isinstance(obj, str):
        def one(m):
            key = m.group(1)
            if key not in env:
                raise SrlmError(f"{where}: ${{{key}}} is not defined in the recipe's vars; add it there or pass "
                                f"--set {key}=VALUE")
            return str(env[key])

        whole = re.fullmatch(r"\$\{(\w+)\}", obj)
        if whole and whole.group(1) in env and not isinstance(env[whole.group(1)], str):
            return env[whole.group(1)]  # keep numbers and lists typed
        return re.sub(r"\$\{(\w+)\}", one, obj)
    if isinstance(obj, dict):
        return {k: _substitute(v, env, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, env, where) for v in obj]
    return obj


def apply_set(recipe: dict, items: list[str]) -> dict:
    """--set KEY=VALUE: a var when KEY names one, else a dotted path; `STAGE.key` sets a stage's config key."""
    recipe = copy.deepcopy(recipe)
    names = {s.get("name"): s for s in recipe.get("stages", [])}
    for item in items:
        if "=" not in item:
            raise SrlmError(f"--set {item!r}: expected KEY=VALUE (e.g. sft.steps=10, model=/path, eval.n=100)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        parts = key.split(".")
        if len(parts) == 1 and key in (recipe.get("vars") or {}):
            recipe["vars"][key] = value
        elif parts[0] in names and parts[0] not in RECIPE_KEYS:
            stage = names[parts[0]]
            if len(parts) >= 2 and parts[1] in STAGE_KEYS - {"config", "name"}:
                stage[parts[1]] = value
            else:
                node = stage.setdefault("config", {})
                for p in parts[1:-1]:
                    node = node.setdefault(p, {})
                node[parts[-1]] = value
        elif parts[0] in RECIPE_KEYS:
            node = recipe
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        else:
            raise SrlmError(f"--set {key}: not a var ({', '.join(recipe.get('vars') or {}) or 'none'}), a stage "
                            f"({', '.join(names)}) or a recipe key ({', '.join(sorted(RECIPE_KEYS))})")
    return recipe


def load_recipe(name: str, sets: list[str] | None = None, quick: bool = False) -> dict:
    path = find_recipe(name)
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise SrlmError(f"{path}{':' + str(mark.line + 1) if mark else ''}: malformed YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(recipe, dict):
        raise SrlmError(f"{path}: a recipe is a mapping with model, task, stages, ...")
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise SrlmError(f"{path}: unknown recipe key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(RECIPE_KEYS))}")
    if quick:
        q = recipe.get("quick") or {}
        stage_q = q.get("stages") or {}
        for s in recipe.get("stages", []):
            if s.get("name") in stage_q:
                s["config"] = _deep_merge(s.get("config") or {}, stage_q[s["name"]])
        recipe = _deep_merge(recipe, {k: v for k, v in q.items() if k != "stages"})
    recipe = apply_set(recipe, sets or [])
    recipe = _substitute(recipe, recipe.get("vars") or {}, str(path))
    recipe.setdefault("name", path.stem)
    recipe["_path"] = str(path)
    _validate(recipe, str(path))
    return recipe


def _validate(recipe: dict, where: str) -> None:
    for key in ("model", "task", "stages"):
        if not recipe.get(key):
            raise SrlmError(f"{where}: the recipe needs `{key}`")
    seen: list[str] = []
    for i, s in enumerate(recipe["stages"]):
        if not isinstance(s, dict) or not s.get("name") or not s.get("kind"):
            raise SrlmError(f"{where}: stage {i} needs a `name` and a `kind`")
        bad = set(s) - STAGE_KEYS
        if bad:
            raise SrlmError(f"{where}: stage {s['name']!r} has unknown key(s) {', '.join(sorted(bad))}; "
                            f"known: {', '.join(sorted(STAGE_KEYS))}")
        if s["kind"] not in KINDS:
            close = difflib.get_close_matches(s["kind"], KINDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SrlmError(f"{where}: stage {s['name']!r} has unknown kind {s['kind']!r}.{hint} "
                            f"Kinds: {', '.join(KINDS)}")
        if s["name"] in seen or s["name"] in ("evals", "tokenizer", "init", "model", "final"):
            raise SrlmError(f"{where}: stage name {s['name']!r} is repeated or reserved; give each stage its own name")
        frm = s.get("from")
        if frm not in (None, "model") and frm not in seen:
            raise SrlmError(f"{where}: stage {s['name']!r} starts from {frm!r}, which is not an earlier stage "
                            f"({', '.join(seen) or 'none yet'}); use an earlier stage's name or `model`")
        for ref in re.findall(r"@([\w.-]+)", json.dumps(s.get("config") or {})):
            if ref not in seen:
                raise SrlmError(f"{where}: stage {s['name']!r} refers to @{ref}, which is not an earlier stage "
                                f"({', '.join(seen) or 'none yet'})")
        seen.append(s["name"])


# ---------------------------------------------------------------------------------------------
# Running


class Runner:
    def __init__(self, recipe: dict, out: str | Path, log=print):
        self.recipe = recipe
        self.out = Path(out)
        self.log = log
        self.task_name = recipe["task"]
        self.task_options = dict(recipe.get("task_options") or {})
        self.eval_cfg = {"n": 500, "batch_size": 64, "max_new_tokens": None, "chat": True, "data": None,
                         **(recipe.get("eval") or {})}
        self.seed = int(recipe.get("seed", 0))

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
                raise SrlmError(f"model {model!r} is a preset: the recipe needs `tokenizer` (a folder, or "
                                f"{{train: {{vocab_size: N}}}} to train one)")
            return folder
        if isinstance(spec, str):
            if not (Path(spec) / "tokenizer.json").is_file():
                raise SrlmError(f"tokenizer {spec}: no tokenizer.json there")
            return Path(spec)
        folder = self.out / "tokenizer"
        if (folder / "tokenizer.json").is_file():
            return folder
        from srlm.data.chat import example_to_messages
        from srlm.tokenizer import train_bpe

        t0 = time.perf_counter()
        opts = spec.get("train") or {}
        exs = self._train_examples(limit=int(opts.get("examples", 3000)))
        texts = []
        for ex in exs:
            # role names too: the chat template writes them into every sequence ("assistant" was 8 tokens)
            msgs = example_to_messages(ex)
            texts.append("\n".join(f"{m['role']}\n{m['content']}" for m in msgs))
        tok = train_bpe(texts, int(opts.get("vocab_size", 512)))
        tok.save(folder)
        self.log(f"[tokenizer] trained BPE with {tok.vocab_size} ids on {len(texts)} problems "
                 f"in {time.perf_counter() - t0:.1f}s -> {folder}")
        return folder

    def initial_model(self, tok_dir: Path, preset_name: str, name: str, overrides: dict | None = None) -> Path:
        """A preset model (with `overrides` of its fields) saved once, seeded, so every later stage starts
        from a real folder."""
        folder = self.out / "init" / name
        if (folder / "config.json").is_file():
            return folder
        import torch

        from srlm.model import CausalLM, preset, save
        from srlm.tokenizer import Tokenizer

        tok = Tokenizer.from_dir(tok_dir)
        torch.manual_seed(self.seed)
        cfg = preset(preset_name, **{**(overrides or {}), "vocab_size": tok.vocab_size,
                                     "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id,
                                     "pad_token_id": tok.pad_token_id})
        save(CausalLM(cfg), folder, tokenizer=tok)
        return folder

    def _start(self, spec: str, tok_dir: Path, stage_name: str, overrides: dict | None = None) -> Path:
        folder = self.checkpoint_folder(spec)
        if folder is not None:
            if overrides:
                raise SrlmError(f"stage {stage_name!r}: model_overrides change a preset's shape; model {spec} is a "
                                f"checkpoint, whose shape is fixed")
            if not (folder / "config.json").is_file():
                raise SrlmError(f"model {spec}: no config.json; not a checkpoint folder")
            return folder
        from srlm.model import PRESETS

        if spec not in PRESETS:
            raise SrlmError(f"stage {stage_name!r}: model {spec!r} is neither a checkpoint folder nor a preset "
                            f"({', '.join(PRESETS)})")
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
        if not path.is_file():
            from srlm.data.synthetic import save_jsonl
            from srlm.data.tasks import get_task

            opts = {k: v for k, v in self.task_options.items() if k not in ("n_train", "data")}
            exs = get_task(self.task_name, **opts).load(split="test", limit=int(self.eval_cfg["n"]))
            save_jsonl(exs, path)
        return str(path)

    def eval_argv(self, checkpoint: Path, out_json: Path) -> list[str]:
        e = self.eval_cfg
        argv = [str(checkpoint), "--task", self.task_name, "--data", self.heldout(), "--limit", str(e["n"]),
                "--batch-size", str(e["batch_size"]), "--out", str(out_json), "--no-progress"]
        if e.get("chat", True):
            argv.append("--chat")
        if e.get("max_new_tokens"):
            argv += ["--max-new-tokens", str(e["max_new_tokens"])]
        return argv

    def evaluate(self, name: str, checkpoint: Path) -> tuple[dict, float]:
        out_json = self.out / "evals" / f"{name}.json"
        seconds = out_json.with_suffix(".seconds")
        if out_json.is_file() and seconds.is_file():
            return json.loads(out_json.read_text())["tasks"][self.task_name], float(seconds.read_text())
        from srlm.eval import cli as eval_cli

        parser = argparse.ArgumentParser()
        eval_cli.add_arguments(parser)
        t0 = time.perf_counter()
        results = eval_cli.run(parser.parse_args(self.eval_argv(checkpoint, out_json)))
        m = results["tasks"][self.task_name]
        dt = time.perf_counter() - t0
        seconds.write_text(f"{dt:.3f}\n")
        self.log(f"[{name}] eval: accuracy {100 * m['accuracy']:.1f}% on {m.get('n')} held-out problems ({dt:.0f}s)")
        return m, dt

    # -- one training stage -------------------------------------------------------------------
    def stage_config(self, s: dict, start: Path, tok_dir: Path, done: dict[str, Path]) -> tuple[Any, Any]:
        from srlm.train.cli import stage_module
        from srlm.train.config import load_config

        mod = stage_module(s["kind"])
        cfg = _deep_merge(self.recipe.get("defaults") or {}, s.get("config") or {})
        text = json.dumps(cfg)
        for ref, path in done.items():
            text = text.replace(f"@{ref}", str(path))
        cfg = json.loads(text)
        cfg.update(out_dir=str(self.out / s["name"]), model=str(start), init_from=None, tokenizer=str(tok_dir),
                   resume="auto")
        if s.get("model"):
            cfg.pop("model_overrides", None)  # already applied to the stage's fresh model (see _start)
        cfg.setdefault("seed", self.seed)
        fields = set(mod.Config.__dataclass_fields__)
        if s["kind"] in ("sft", "kd"):
            cfg.setdefault("data", [self.task_name])
            cfg["data_options"] = {**self.task_options, **(cfg.get("data_options") or {})}
        elif s["kind"] == "grpo":
            cfg.setdefault("task", self.task_name)
            cfg["task_options"] = {**{k: v for k, v in self.task_options.items() if k != "n_train"},
                                   **(cfg.get("task_options") or {})}
        cfg = {k: v for k, v in cfg.items() if k in fields or k not in self.recipe.get("defaults", {})}
        config = load_config(mod.Config, None, cfg)
        return mod, config

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        t_all = time.perf_counter()
        (self.out / "recipe.yaml").write_text(yaml.safe_dump({k: v for k, v in self.recipe.items() if k != "_path"},
                                                             sort_keys=False))
        t0 = time.perf_counter()
        tok_dir = self.tokenizer_dir()
        base = self._start(self.recipe["model"], tok_dir, "model")
        setup_s = time.perf_counter() - t0
        current = base
        done: dict[str, Path] = {}
        stages_out: list[dict] = []
        for s in self.recipe["stages"]:
            name, kind = s["name"], s["kind"]
            frm = s.get("from")
            start = (self._start(s["model"], tok_dir, name, (s.get("config") or {}).get("model_overrides"))
                     if s.get("model") else
                     base if frm == "model" else done[frm] if frm else current)
            rec: dict[str, Any] = {"name": name, "kind": kind, "start": str(start)}
            if kind == "eval":
                ckpt = start
            else:
                ckpt, info = self._train(s, start, tok_dir, done)
                rec.update(info)
            done[name] = ckpt
            if s.get("chain", True):
                current = ckpt
            rec["checkpoint"] = str(ckpt)
            if s.get("evaluate", True):
                metrics, rec["eval_s"] = self.evaluate(name, ckpt)
                rec["eval"] = {self.task_name: metrics}
                rec["eval_command"] = "srlm eval " + " ".join(shlex.quote(a) for a in self.eval_argv(
                    ckpt, self.out / "evals" / f"{name}.json"))
            rec["wall_s"] = rec.get("train_s", 0.0) + rec.get("eval_s", 0.0)
            stages_out.append(rec)
        from srlm.recipes.report import write_report

        import torch

        summary = {
            "recipe": self.recipe.get("name"), "description": self.recipe.get("description"),
            "task": self.task_name, "task_options": self.task_options, "eval": self.eval_cfg,
            "setup_s": setup_s, "stages": stages_out, "final": str(current),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
                       f"{torch.__version__}, {torch.get_num_threads()} threads",
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

    def _train(self, s: dict, start: Path, tok_dir: Path, done: dict[str, Path]) -> tuple[Path, dict]:
        stage_dir = self.out / s["name"]
        marker = stage_dir / "done.json"
        if marker.is_file():
            info = json.loads(marker.read_text())
            self.log(f"[{s['name']}] finished earlier ({info.get('steps')} steps); skipping")
            return stage_dir / "final", info
        if not Path(start).is_dir():
            raise SrlmError(f"stage {s['name']!r}: starting checkpoint {start} is missing; re-run the stage that "
                            f"makes it or fix `from`")
        mod, config = self.stage_config(s, start, tok_dir, done)
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
        info = {"steps": config.steps, "train_s": train_s, "log": str(stage_dir / "metrics.jsonl"),
                "notes": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()
                          if k.startswith("kd_") and k in ("kd_kept", "kd_kept_fraction", "kd_solved_fraction")}}
        if s["kind"] == "grpo":
            from srlm.recipes.report import read_log

            last = next((r for r in reversed(read_log(info["log"])) if "reward_errors" in r), {})
            info["notes"].update({k: int(last[k]) for k in ("reward_errors", "verifier_timeouts") if k in last})
        marker.write_text(json.dumps(info, indent=2) + "\n")
        return stage_dir / "final", info


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", default="default",
                        help="a built-in recipe name (default: the tiny CPU pipeline) or a YAML file")
    parser.add_argument("--out", default=None, help="run folder (default: runs/RECIPE, runs/RECIPE-quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="the recipe's quick variant (fewer steps, smaller eval)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override: a var (model=/path), a stage's config key (sft.steps=10) or a recipe key "
                             "(eval.n=100); repeatable")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--list", action="store_true", help="list the built-in recipes and exit")


def main(args) -> int:
    if args.list:
        for name in builtin_recipes():
            r = yaml.safe_load(find_recipe(name).read_text()) or {}
            first = (r.get("description") or "").strip().splitlines()[:1]
            print(f"{name:<36} {first[0] if first else ''}")
        return 0
    recipe = load_recipe(args.recipe, args.set, quick=args.quick)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        recipe.setdefault("defaults", {})["num_threads"] = args.threads
    out = args.out or f"runs/{recipe['name']}{'-quick' if args.quick else ''}"
    Runner(recipe, out).run()
    return 0
