"""`srlm run [RECIPE]`: run a recipe (default: the built-in tiny pipeline) and write its report."""

from __future__ import annotations

import argparse

import yaml

from srlm.recipes.recipe import builtin_recipes, find_recipe, load_recipe
from srlm.recipes.runner import Runner


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "recipe",
        nargs="?",
        default="default",
        help="a built-in recipe name (default: the tiny CPU pipeline) or a YAML file",
    )
    parser.add_argument("--out", default=None, help="run folder (default: runs/RECIPE, runs/RECIPE-quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="the recipe's quick variant (fewer steps, smaller eval)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override: a var (model=/path), a stage's config key (sft.steps=10) or a recipe key "
        "(eval.n=100); repeatable",
    )
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
