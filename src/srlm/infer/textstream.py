"""One row's text as its token ids arrive: what a streaming client may be shown.

`TextStream` turns ids into text deltas (the tokenizer's `StreamDecoder`), holds back a tail
that could still begin a stop string, and cuts the text before the first stop string it finds
(`stopped` then turns True), so "".join(deltas) is the text `Engine.generate` returns for the
same ids and stop strings; without stop strings and without a reader along the way it can just
collect the ids and decode them once at the end. `ReasoningSplitter` routes the text between <think> and </think> to
the reasoning and the rest to the answer, markers split across deltas included, each part
without its surrounding whitespace; "".join of each part's deltas is that part, whole.
"""

from __future__ import annotations

from collections.abc import Sequence

from srlm.infer.engine import THINK_END, THINK_START


def _partial_suffix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of one of `markers`."""
    best = 0
    for m in markers:
        for k in range(min(len(text), len(m) - 1), best, -1):
            if m.startswith(text[-k:]):
                best = k
                break
    return best


class TextStream:
    def __init__(
        self,
        tokenizer,
        prompt_ids: Sequence[int] = (),
        stop_strings: Sequence[str] = (),
        skip_special_tokens: bool = True,
        incremental: bool = True,
    ):
        """`incremental=False` (no stop strings then): nobody reads the text before the end, so the ids are
        only collected, and `finish` decodes them at once (the same text, without a decode per token)."""
        self.stops = [s for s in stop_strings if s]
        if self.stops and not incremental:
            raise ValueError("stop strings are found as the text grows: they need incremental=True")
        self.incremental = incremental
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.tail = list(prompt_ids)[-5:]
        self.ids: list[int] = []
        self.decoder = tokenizer.stream_decoder(self.tail, skip_special_tokens=skip_special_tokens)
        self.pending = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """The text that `token_id` makes safe to show ("" while held back, and always once stopped)."""
        if self.stopped:
            return ""
        if not self.incremental:
            self.ids.append(int(token_id))
            return ""
        self.pending += self.decoder.push(token_id)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest, once generation ended (text held back for a stop string that did not come)."""
        if self.stopped:
            return ""
        if not self.incremental:  # as the stream decoder does: the prompt's tail gives the first token its spacing
            prefix = self.tokenizer.decode(self.tail, skip_special_tokens=self.skip)
            return self.tokenizer.decode(self.tail + self.ids, skip_special_tokens=self.skip)[len(prefix) :]
        self.pending += self.decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self.pending
        if self.stops:
            cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:
                self.pending, self.stopped = "", True
                return text[:cut]
        keep = 0 if final or not self.stops else _partial_suffix(text, self.stops)
        self.pending = text[len(text) - keep :]
        return text[: len(text) - keep]


class ReasoningSplitter:
    """Text deltas in, (reasoning delta, answer delta) out."""

    def __init__(self, in_thought: bool = False, start: str = THINK_START, end: str = THINK_END):
        """`in_thought`: the prompt already opened a thought (a template that ends with <think>)."""
        self.thinking = in_thought
        self.start, self.end = start, end
        self.buf = ""
        self.began = {True: False, False: False}  # a part's leading whitespace is dropped
        self.held = {True: "", False: ""}  # its trailing whitespace waits for more text

    def _part(self, text: str, out: dict) -> None:
        part = self.thinking
        text = self.held[part] + text
        if not self.began[part]:
            text = text.lstrip()
        body = text.rstrip()
        self.held[part] = text[len(body) :]
        if body:
            self.began[part] = True
            out[part] += body

    def push(self, delta: str) -> tuple[str, str]:
        out = {True: "", False: ""}
        self.buf += delta
        while True:
            marker = self.end if self.thinking else self.start
            i = self.buf.find(marker)
            if i < 0:
                break
            self._part(self.buf[:i], out)
            self.held[self.thinking] = ""  # whitespace before a marker ends the part
            self.thinking = not self.thinking
            self.buf = self.buf[i + len(marker) :]
        keep = _partial_suffix(self.buf, [self.end if self.thinking else self.start])
        self._part(self.buf[: len(self.buf) - keep], out)
        self.buf = self.buf[len(self.buf) - keep :]
        return out[True], out[False]

    def finish(self) -> tuple[str, str]:
        out = {True: "", False: ""}
        self._part(self.buf, out)
        self.buf = ""
        return out[True], out[False]
