"""`srlm chat PATH`: an interactive chat in the terminal.

Each turn goes through the checkpoint's chat template with the whole history; the reply
streams as it is generated, with the model's thinking (<think>...</think>) shown dimmed
apart from the answer. `/reset` clears the history, `/exit` (or end of input) quits.
Reads plain lines from stdin, so it can be driven by a pipe as well as by a person.
"""

from __future__ import annotations

import sys

from srlm.errors import SrlmError
from srlm.infer.engine import THINK_END, THINK_START
from srlm.infer.load import load_engine
from srlm.infer.options import add_model_arguments, add_sampling_arguments, sampling_kwargs, text_argument

DIM, RESET = "\033[2m", "\033[0m"


class ThinkingPrinter:
    """Writes streamed text, dimming what lies inside <think>...</think> (markers split across deltas too)."""

    def __init__(self, out, color: bool):
        self.out, self.color = out, color
        self.thinking = False
        self.buf = ""

    def _emit(self, text: str) -> None:
        if text:
            self.out.write(f"{DIM}{text}{RESET}" if self.thinking and self.color else text)

    def write(self, delta: str) -> None:
        self.buf += delta
        while True:
            marker = THINK_END if self.thinking else THINK_START
            i = self.buf.find(marker)
            if i < 0:
                break
            self._emit(self.buf[:i])
            if not self.thinking:
                self.thinking = True
            self._emit(marker)  # both markers belong to the dimmed thought
            if marker == THINK_END:
                self.thinking = False
            self.buf = self.buf[i + len(marker) :]
        # hold back a tail that could be the start of a marker
        keep = next(
            (
                k
                for k in range(min(len(self.buf), 8), 0, -1)
                if (THINK_END if self.thinking else THINK_START).startswith(self.buf[-k:])
            ),
            0,
        )
        self._emit(self.buf[: len(self.buf) - keep])
        self.buf = self.buf[len(self.buf) - keep :]
        self.out.flush()

    def close(self) -> None:
        self._emit(self.buf)
        self.buf = ""
        self.out.flush()


def add_arguments(p) -> None:
    add_model_arguments(p)
    p.add_argument("--system", default=None, help="a system message at the start of every conversation")
    p.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="dim the thinking (auto: when stdout is a terminal)",
    )
    add_sampling_arguments(p, temperature=0.7, max_new_tokens=512)


def main(args) -> int:
    text_argument(args.system, "--system")
    engine = load_engine(
        args.path,
        dtype=args.dtype,
        quantize=args.quantize,
        threads=args.threads,
        allow_nonfinite=args.allow_nonfinite,
        revision=args.revision,
    )
    if not engine.tokenizer.has_chat_template:
        raise SrlmError(
            f"{args.path}: srlm chat needs a chat template, and this checkpoint's tokenizer has none "
            f'(tokenizer_config.json "chat_template" or chat_template.jinja); use srlm generate instead'
        )
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    kw = sampling_kwargs(args)
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    interactive = sys.stdin.isatty()
    if interactive:
        print("srlm chat — /reset clears the history, /exit quits", file=sys.stderr)
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history = list(start)
            print("(history cleared)")
            continue
        history.append({"role": "user", "content": text})
        ids = engine.tokenizer.apply_chat_template(history, add_generation_prompt=True)
        printer = ThinkingPrinter(sys.stdout, color)
        reply = []
        for delta in engine.stream(ids, **kw):
            reply.append(delta)
            printer.write(delta)
        printer.close()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})
    return 0
