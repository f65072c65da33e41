"""`srlm generate PATH --prompt TEXT`: completions from a checkpoint folder.

One completion streams to the terminal as it is generated; `--n K` prints K samples;
`--json` prints one JSON object (prompt, completions with ids, finish reasons and
timing). `--chat` wraps the prompt as one user turn of the checkpoint's chat template.
The sampling flags map one to one onto `Engine.generate`; shared with `srlm chat`.
"""

from __future__ import annotations

import json
import sys
import time

from srlm.errors import SrlmError


def add_model_arguments(p) -> None:
    p.add_argument("path", help="checkpoint folder (config.json, *.safetensors, tokenizer.json), .gguf file, "
                                "or Hugging Face Hub id (ORG/NAME)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub id")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="int8 weight-only Linear layers (per-output-channel scales), applied at load")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: as saved; bfloat16 with --quantize)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def add_sampling_arguments(p, temperature: float | None = None, max_new_tokens: int = 256) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="new tokens at most")
    p.add_argument("--temperature", type=float, default=temperature,
                   help="0 = greedy" + (f" (default {temperature})" if temperature is not None
                                        else " (default 0, or 0.8 with --n > 1)"))
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the best (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL repetition penalty (1 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--thinking-budget", type=int, default=None,
                   help="at most N tokens inside <think>...</think>, then </think> is forced")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--stop-regex", default=None, metavar="PATTERN",
                   help="stop as soon as the text matches, e.g. 'The answer is -?[0-9]+\\.'")


def sampling_kwargs(args, n: int = 1) -> dict:
    temperature = args.temperature if args.temperature is not None else (0.8 if n > 1 else 0.0)
    return dict(max_new_tokens=args.max_new_tokens, temperature=temperature, top_k=args.top_k or None,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                thinking_budget=args.thinking_budget, stop_strings=args.stop,
                stop_condition=_compile_regex(args.stop_regex))


def _compile_regex(pattern: str | None):
    import re

    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise SrlmError(f"--stop-regex {pattern!r} is not a valid regular expression ({e})") from None


def load_engine(args):
    import torch

    from srlm.infer.engine import Engine
    from srlm.infer.quant import load_for_inference

    if args.threads is not None:
        if args.threads < 1:
            raise SrlmError(f"--threads {args.threads}: give a positive number of threads")
        torch.set_num_threads(args.threads)
    model, tokenizer = load_for_inference(args.path, dtype=args.dtype, quantize=args.quantize,
                                          revision=getattr(args, "revision", None))
    if tokenizer is None:
        raise SrlmError(f"{args.path}: no tokenizer.json, so text prompts cannot be encoded; "
                        f"save the checkpoint with its tokenizer")
    return Engine(model, tokenizer)


def add_arguments(p) -> None:
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--chat", action="store_true", help="send the prompt as a user turn through the chat template")
    p.add_argument("--n", type=int, default=1, help="completions to sample")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_sampling_arguments(p)


def main(args) -> int:
    engine = load_engine(args)
    if args.chat and not engine.tokenizer.has_chat_template:
        raise SrlmError(f"{args.path}: --chat needs a chat template, and this checkpoint's tokenizer has none "
                        f"(tokenizer_config.json \"chat_template\" or chat_template.jinja); drop --chat")
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
        print(json.dumps({
            "prompt": args.prompt, "prompt_tokens": len(prompt_ids),
            "completions": [{"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason}
                            for c in group],
            "settings": {k: v for k, v in kw.items() if v is not None} | {"n": args.n, "quantize": args.quantize},
            "seconds": round(elapsed, 3), "new_tokens": new, "tokens_per_s": round(new / elapsed, 1),
        }, ensure_ascii=False))
        return 0
    for i, c in enumerate(group):
        print(f"--- sample {i + 1}/{args.n} ({c.finish_reason}, {len(c.token_ids)} tokens)")
        print(c.text)
    return 0
