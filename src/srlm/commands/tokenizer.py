"""`srlm tokenizer train --files ... --vocab-size N --out DIR`: train a byte-level BPE tokenizer."""

from __future__ import annotations

from srlm.tokenizer import train_bpe


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("train", help="train a byte-level BPE tokenizer from text or jsonl files")
    p.add_argument("--files", nargs="+", required=True, help="text files, or .jsonl files with a 'text' field")
    p.add_argument("--vocab-size", type=int, default=4096, help="total ids, the 5 added tokens included")
    p.add_argument("--min-frequency", type=int, default=2, help="merges rarer than this are not learned")
    p.add_argument("--out", required=True, help="folder to write tokenizer.json and tokenizer_config.json to")
    p.add_argument("--sample", default="Tom has 12 apples and eats 3. How many are left? 12 - 3 = 9.")


def main(args) -> int:
    if args.action == "train":
        tok = train_bpe(args.files, args.vocab_size, min_frequency=args.min_frequency, files=True)
        tok.save(args.out)
        ids = tok.encode(args.sample)
        print(f"wrote {args.out}: vocab size {tok.vocab_size}")
        print(f"sample: {args.sample!r}")
        print(f"  {len(ids)} tokens: {[tok.decode([i]) for i in ids]}")
        print(f"  ids: {ids}")
    return 0
