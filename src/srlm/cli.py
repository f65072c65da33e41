"""The `srlm` command line: one verb per room, all over the same checkpoint folder.

Each verb is a thin command module in `srlm.commands` that exposes `add_arguments(parser)` and
`main(args) -> int`: it parses the verb's flags and calls the typed library functions of the rooms
below (the runner, `srlm.eval.evaluate`, `srlm.infer.load_engine`, ...), which never import it.
Modules are imported lazily so `srlm --help` stays fast and a verb's heavy imports cost only that verb.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from srlm.errors import SrlmError

# verb -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("srlm.commands.run", "run a recipe (default: the built-in tiny pipeline) and write a report"),
    "train": ("srlm.commands.train", "train one stage: pretrain | sft | kd | grpo"),
    "eval": ("srlm.commands.eval", "evaluate a checkpoint on tasks"),
    "score": ("srlm.commands.score", "score predictions made elsewhere with the official metrics"),
    "generate": ("srlm.commands.generate", "generate text from a checkpoint"),
    "chat": ("srlm.commands.chat", "interactive chat in the terminal"),
    "bench": ("srlm.commands.bench", "benchmark prefill and decode speed and memory"),
    "serve": ("srlm.commands.serve", "serve a checkpoint over an OpenAI-compatible API, with a chat page"),
    "info": ("srlm.commands.info", "describe a checkpoint: architecture, size, memory"),
    "convert": ("srlm.commands.convert", "convert a GGUF file into a Hugging Face checkpoint folder"),
    "export": ("srlm.commands.export", "export a checkpoint as GGUF for llama.cpp / Ollama"),
    "tokenizer": ("srlm.commands.tokenizer", "train a byte-level BPE tokenizer from text files"),
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
