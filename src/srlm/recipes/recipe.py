"""Recipes: finding, reading, overriding and checking the YAML pipelines that `srlm run` executes.

Built-in pipelines live in `pipelines/` beside this file (`default.yaml`, `study-*.yaml`);
single-stage training configs for `srlm train STAGE --config` live in `configs/`. A recipe is a
YAML mapping; see `srlm.recipes.runner` for what its keys mean. `load_recipe(name, sets, quick)`
returns the recipe with `--quick` overrides merged, `--set` overrides applied, `${vars}`
substituted and every stage checked, or raises `SrlmError` naming the file and the stage.
"""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from srlm.errors import SrlmError, did_you_mean

TRAIN_KINDS = ("pretrain", "sft", "kd", "grpo")
KINDS = TRAIN_KINDS + ("eval",)
RECIPE_KEYS = {
    "name",
    "description",
    "model",
    "revision",
    "tokenizer",
    "task",
    "task_options",
    "eval",
    "defaults",
    "stages",
    "vars",
    "quick",
    "seed",
}
STAGE_KEYS = {"name", "kind", "config", "from", "model", "chain", "evaluate"}


def _pipelines():
    return resources.files("srlm.recipes") / "pipelines"


def builtin_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in _pipelines().iterdir() if p.name.endswith(".yaml"))


def find_recipe(name: str) -> Path:
    p = Path(name)
    if p.is_file():
        return p
    if p.suffix in (".yaml", ".yml") or "/" in name:
        raise SrlmError(f"recipe {name}: no such file")
    candidate = _pipelines() / f"{name}.yaml"
    if not candidate.is_file():
        known = builtin_recipes()
        raise SrlmError(
            f"unknown recipe {name!r}.{did_you_mean(name, known)} Built-in recipes: {', '.join(known)}; "
            "or give a YAML path"
        )
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
                raise SrlmError(
                    f"{where}: ${{{key}}} is not defined in the recipe's vars; add it there or pass --set {key}=VALUE"
                )
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
            raise SrlmError(
                f"--set {key}: not a var ({', '.join(recipe.get('vars') or {}) or 'none'}), a stage "
                f"({', '.join(names)}) or a recipe key ({', '.join(sorted(RECIPE_KEYS))})"
            )
    return recipe


def load_recipe(name: str, sets: list[str] | None = None, quick: bool = False) -> dict:
    path = find_recipe(name)
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise SrlmError(
            f"{path}{':' + str(mark.line + 1) if mark else ''}: malformed YAML ({getattr(e, 'problem', e)})"
        ) from None
    if not isinstance(recipe, dict):
        raise SrlmError(f"{path}: a recipe is a mapping with model, task, stages, ...")
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise SrlmError(
            f"{path}: unknown recipe key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(RECIPE_KEYS))}"
        )
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
            raise SrlmError(
                f"{where}: stage {s['name']!r} has unknown key(s) {', '.join(sorted(bad))}; "
                f"known: {', '.join(sorted(STAGE_KEYS))}"
            )
        if s["kind"] not in KINDS:
            raise SrlmError(
                f"{where}: stage {s['name']!r} has unknown kind {s['kind']!r}.{did_you_mean(s['kind'], KINDS)} "
                f"Kinds: {', '.join(KINDS)}"
            )
        if s["name"] in seen or s["name"] in ("evals", "tokenizer", "init", "model", "final"):
            raise SrlmError(f"{where}: stage name {s['name']!r} is repeated or reserved; give each stage its own name")
        frm = s.get("from")
        if frm not in (None, "model") and frm not in seen:
            raise SrlmError(
                f"{where}: stage {s['name']!r} starts from {frm!r}, which is not an earlier stage "
                f"({', '.join(seen) or 'none yet'}); use an earlier stage's name or `model`"
            )
        for ref in re.findall(r"@([\w.-]+)", json.dumps(s.get("config") or {})):
            if ref not in seen:
                raise SrlmError(
                    f"{where}: stage {s['name']!r} refers to @{ref}, which is not an earlier stage "
                    f"({', '.join(seen) or 'none yet'})"
                )
        seen.append(s["name"])
