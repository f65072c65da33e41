"""The `srlm` command line: one verb per room, all over the same checkpoint folder.

Each verb lives in the module that owns it; a module exposes
`add_arguments(parser)` and `main(args) -> int`. Modules are imported lazily so
`srlm --help` stays fast and a verb's heavy imports cost only that verb.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from srlm.errors import SrlmError

# verb -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("srlm.recipes.runner", "run a recipe (default: the built-in tiny pipeline) and write a report"),
    "train": ("srlm.train.cli", "train one stage: pretrain | sft | kd | grpo"),
    "eval": ("srlm.eval.cli", "evaluate a checkpoint on tasks"),
    "score": ("srlm.eval.score", "score predictions made elsewhere with the official metrics"),
    "generate": ("srlm.infer.cli", "generate text from a checkpoint"),
    "chat": ("srlm.infer.chat", "interactive chat in the terminal"),
    "bench": ("srlm.infer.bench", "benchmark prefill and decode speed and memory"),
    "info": ("srlm.model.info", "describe a checkpoint: architecture, size, memory"),
    "convert": ("srlm.model.convert", "convert a GGUF file into a Hugging Face checkpoint folder"),
    "export": ("srlm.model.export", "export a checkpoint as GGUF for llama.cpp / Ollama"),
    "tokenizer": ("srlm.tokenizer", "train a byte-level BPE tokenizer from text files"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srlm", description="Small Reasoning Language Models")
    from srlm import __version__

    parser.add_argument("--version", action="version", version=f"srlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    for verb, (mod, help_) in COMMANDS.items():
        p = sub.add_parser(verb, help=help_, description=help_)
        p.set_defaults(_module=mod)
        # Only the chosen verb's module is imported to build its arguments.
        if wanted == verb:
            importlib.import_module(mod).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.main(args) or 0)
    except SrlmError as e:
        print(f"srlm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("srlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
