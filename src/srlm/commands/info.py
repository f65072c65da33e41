"""`srlm info PATH | --preset NAME`: a checkpoint's architecture, parameter count and memory."""

from __future__ import annotations

import json

from srlm.errors import SrlmError
from srlm.model.config import ModelConfig
from srlm.model.info import describe
from srlm.model.presets import preset


def add_arguments(p):
    p.add_argument("path", nargs="?", help="checkpoint folder, .gguf file or Hugging Face Hub id (ORG/NAME)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub id")
    p.add_argument("--preset", help="describe a named preset instead of a folder")
    p.add_argument("--json", action="store_true", help="print JSON")


def main(args) -> int:
    if args.preset:
        info = describe(preset(args.preset))
        name = args.preset
    elif args.path:
        from srlm.model.hub import resolve

        path = resolve(args.path, args.revision, weights=False)
        if path.is_file() and path.suffix.lower() == ".gguf":
            from srlm.model.gguf import read_header

            config, meta = read_header(path)
            info = describe(config)
            info["tokenizer"] = True  # a GGUF always carries its vocabulary
            info["chat_template"] = "tokenizer.chat_template" in meta
        elif path.is_dir():
            info = describe(ModelConfig.from_file(path / "config.json"), path)
        else:
            raise SrlmError(f"{path}: not a checkpoint folder or .gguf file")
        name = str(args.path)
    else:
        raise SrlmError("give a checkpoint folder or --preset NAME")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(name)
    for k, v in info.items():
        if k == "weight_memory_mb":
            v = ", ".join(f"{d} {mb:,.1f} MB" for d, mb in v.items())
        elif k.endswith("parameters"):
            v = f"{v:,} ({v / 1e6:.2f}M)"
        elif isinstance(v, int) and not isinstance(v, bool):
            v = f"{v:,}"
        print(f"  {k.replace('_', ' '):26s} {v}")
    return 0
