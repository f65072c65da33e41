"""Command-line flags shared by the inference commands (`srlm generate`, `srlm chat`, `srlm serve`).

The argument layer only: commands add these flags, then pass the parsed values to typed library
functions (`srlm.infer.load.load_engine`, `Engine.generate`). Library modules never import this one.
"""

from __future__ import annotations

from srlm.errors import SrlmError


def add_model_arguments(p) -> None:
    p.add_argument(
        "path",
        help="checkpoint folder (config.json, *.safetensors, tokenizer.json), .gguf file, "
        "or Hugging Face Hub id (ORG/NAME)",
    )
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub id")
    from srlm.infer.quant import QUANT_MODES

    p.add_argument(
        "--quantize",
        choices=list(QUANT_MODES),
        default=None,
        help="weight-only Linear layers, applied at load: int8 (per-output-channel scales) or int4 "
        "(groups of 32 with scale and zero point)",
    )
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: as saved; bfloat16 with --quantize)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="run a checkpoint whose weights hold NaN or Inf (refused by default: its outputs are garbage)",
    )


def add_sampling_arguments(p, temperature: float | None = None, max_new_tokens: int = 256) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="new tokens at most")
    p.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help="0 = greedy"
        + (f" (default {temperature})" if temperature is not None else " (default 0, or 0.8 with --n > 1)"),
    )
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the best (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL repetition penalty (1 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument(
        "--thinking-budget",
        type=int,
        default=None,
        help="at most N tokens inside <think>...</think>, then </think> is forced",
    )
    p.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    p.add_argument(
        "--ignore-eos",
        action="store_true",
        help="do not stop at the end-of-sequence / end-of-turn tokens (exactly --max-new-tokens, e.g. to time it)",
    )
    p.add_argument(
        "--stop-regex",
        default=None,
        metavar="PATTERN",
        help="stop as soon as the text matches, e.g. 'The answer is -?[0-9]+\\.'",
    )


def text_argument(value: str | None, flag: str) -> str | None:
    """`value` when it is valid UTF-8; an `SrlmError` naming `flag` and the first bad byte if not.

    Python hands undecodable command-line bytes over as lone surrogates, which the tokenizer rejects
    with a TypeError.
    """
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = value[e.start : e.end].encode("utf-8", "surrogateescape")
        raise SrlmError(
            f"{flag}: not valid UTF-8 text (byte 0x{raw[0]:02x} at character {e.start + 1}); "
            f"give UTF-8 text (check the terminal's or the file's encoding)"
        ) from None
    return value


def sampling_kwargs(args, n: int = 1) -> dict:
    """`Engine.generate` / `stream` keywords from the flags: one `SamplingParams` and the stop controls."""
    for s in args.stop or []:
        text_argument(s, "--stop")
        if not s:
            raise SrlmError(
                "--stop '': an empty stop string matches at once, so every completion would be empty; "
                "give the text to stop at"
            )
    from srlm.infer.sampling import SamplingParams

    temperature = args.temperature if args.temperature is not None else (0.8 if n > 1 else 0.0)
    sampling = SamplingParams(
        temperature=temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens,
    )
    return dict(
        sampling=sampling,
        seed=args.seed,
        thinking_budget=args.thinking_budget,
        stop_strings=args.stop,
        stop_condition=_compile_regex(args.stop_regex),
        stop_token_ids=[] if getattr(args, "ignore_eos", False) else None,
    )


def _compile_regex(pattern: str | None):
    import re

    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise SrlmError(f"--stop-regex {pattern!r} is not a valid regular expression ({e})") from None
