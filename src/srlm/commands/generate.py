"""`srlm generate PATH --prompt TEXT`: completions from a checkpoint folder.

One completion streams to the terminal as it is generated; `--n K` prints K samples;
`--json` prints one JSON object (prompt, completions with ids, finish reasons and
timing). `--chat` wraps the prompt as one user turn of the checkpoint's chat template.
The sampling flags (srlm.infer.options, shared with `srlm chat`) map one to one onto `Engine.generate`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from srlm.errors import SrlmError
from srlm.infer.load import load_engine
from srlm.infer.options import add_model_arguments, add_sampling_arguments, sampling_kwargs, text_argument


def add_arguments(p) -> None:
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--chat", action="store_true", help="send the prompt as a user turn through the chat template")
    p.add_argument("--n", type=int, default=1, help="completions to sample")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_sampling_arguments(p)


def main(args) -> int:
    text_argument(args.prompt, "--prompt")
    engine = load_engine(
        args.path,
        dtype=args.dtype,
        quantize=args.quantize,
        threads=args.threads,
        allow_nonfinite=args.allow_nonfinite,
        revision=args.revision,
    )
    if args.chat and not engine.tokenizer.has_chat_template:
        raise SrlmError(
            f"{args.path}: --chat needs a chat template, and this checkpoint's tokenizer has none "
            f'(tokenizer_config.json "chat_template" or chat_template.jinja); drop --chat'
        )
    kw = sampling_kwargs(args, args.n)
    prompt_ids = engine.encode_prompt(args.prompt, chat=args.chat)
    t0 = time.perf_counter()
    if args.n == 1 and not args.json:
        for delta in engine.stream(prompt_ids, **kw):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    group = engine.generate([prompt_ids], n=args.n, **kw)[0]
    elapsed = time.perf_counter() - t0
    if args.json:
        new = sum(len(c.token_ids) for c in group)
        print(
            json.dumps(
                {
                    "prompt": args.prompt,
                    "prompt_tokens": len(prompt_ids),
                    "completions": [
                        {"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason} for c in group
                    ],
                    "settings": {
                        **dataclasses.asdict(kw["sampling"]),
                        "seed": args.seed,
                        "thinking_budget": args.thinking_budget,
                        "stop": args.stop,
                        "stop_regex": args.stop_regex,
                        "n": args.n,
                        "quantize": args.quantize,
                    },
                    "seconds": round(elapsed, 3),
                    "new_tokens": new,
                    "tokens_per_s": round(new / elapsed, 1),
                },
                ensure_ascii=False,
            )
        )
        return 0
    for i, c in enumerate(group):
        print(f"--- sample {i + 1}/{args.n} ({c.finish_reason}, {len(c.token_ids)} tokens)")
        print(c.text)
    return 0
