"""`srlm convert MODEL.gguf --out FOLDER`: a GGUF file as a Hugging Face checkpoint folder.

The tensors are dequantized, renamed and un-permuted, and the tokenizer, special tokens and chat
template rebuilt from the metadata (`srlm.model.gguf.read`); the folder loads in srlm and in
transformers with the same logits. MODEL may be a local file or `ORG/NAME/FILE.gguf` on the Hub.
"""

from __future__ import annotations

from pathlib import Path

from srlm.errors import SrlmError


def add_arguments(p) -> None:
    p.add_argument("path", help="a .gguf file (or ORG/NAME/FILE.gguf on the Hugging Face Hub)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument(
        "--dtype",
        default=None,
        help="float32 | bfloat16 | float16 (default: float32 for quantized files, else the file's)",
    )
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub file")


def main(args) -> int:
    from srlm.model.checkpoint import save
    from srlm.model.gguf import load
    from srlm.model.hub import resolve

    path = resolve(args.path, args.revision)
    if path.suffix.lower() != ".gguf" or not path.is_file():
        raise SrlmError(f"{args.path}: srlm convert reads a .gguf file (a checkpoint folder needs no conversion)")
    model, tokenizer = load(path, dtype=args.dtype)
    out = save(model, Path(args.out), tokenizer=tokenizer)
    c = model.config
    print(
        f"wrote {out}: {c.model_type}, {c.num_hidden_layers} layers x {c.hidden_size}, {model.num_parameters:,} "
        f"parameters in {c.dtype}, tokenizer with {tokenizer.vocab_size:,} ids"
        + (", chat template" if tokenizer.has_chat_template else "")
    )
    return 0
