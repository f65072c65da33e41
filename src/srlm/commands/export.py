"""`srlm export CKPT --format gguf --type TYPE --out FILE`: a checkpoint as a GGUF for llama.cpp and Ollama.

CKPT is a checkpoint folder, a Hub id or another GGUF; TYPE is f32, f16, bf16, q8_0 or q4_0
(`srlm.model.gguf.export` says which tensors each keeps at higher precision). The weights are
read in float32 so nothing is rounded twice.
"""

from __future__ import annotations

from pathlib import Path

from srlm.model.gguf import EXPORT_TYPES


def add_arguments(p) -> None:
    p.add_argument("path", help="checkpoint folder, Hugging Face Hub id, or .gguf file")
    p.add_argument("--format", choices=["gguf"], default="gguf", help="output format")
    p.add_argument("--type", choices=EXPORT_TYPES, default="f16", help="weight type of the matrices (default f16)")
    p.add_argument("--out", required=True, help="file to write, e.g. model-f16.gguf")
    p.add_argument("--name", default=None, help="general.name in the file (default: the file name)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub id")


def main(args) -> int:
    from srlm.model.checkpoint import load
    from srlm.model.gguf import export

    model, tokenizer = load(args.path, dtype="float32", revision=args.revision)
    out = export(model, tokenizer, Path(args.out), args.type, name=args.name)
    print(
        f"wrote {out}: {args.type}, {out.stat().st_size / 2**20:,.1f} MiB, "
        f"{model.config.model_type} architecture, {model.num_parameters:,} parameters"
    )
    return 0
