"""Progress for long work: a live bar in a terminal, plain lines in a log.

`Progress(total, desc)` shows tqdm's bar (rate, ETA and the latest figures) when stderr is a
terminal. When it is not (CI, `> log.txt`, a pipe), it prints one plain line every `every` steps
and at the end, e.g. `[sft] step 200/1400 (14%) loss 1.234 | 3.1 it/s, 0:00:64 elapsed, ETA 0:06:27`,
so a log shows the run moving without carriage-return noise. Used by the training loop and the
evaluation harness.
"""

from __future__ import annotations

import sys
import time
from typing import Any


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


class Progress:
    """A progress display of `total` steps; `enabled=False` shows nothing.

    `every`: in plain mode, print a line every this many steps (default: about 20 lines a run).
    `unit`: what a step is ("it", "ex").
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        initial: int = 0,
        enabled: bool = True,
        every: int | None = None,
        unit: str = "it",
        stream=None,
    ):
        self.total, self.n, self.desc, self.unit = int(total), int(initial), desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = max(1, every or -(-max(self.total - self.n, 1) // 20))
        self.figures: dict[str, Any] = {}
        self._start_n, self._t0 = self.n, time.perf_counter()
        self._bar = None
        if self.live:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total, initial=self.n, desc=desc, unit=unit, dynamic_ncols=True, file=self.stream
            )

    def set(self, **figures: Any) -> None:
        """The latest figures (loss, reward, tokens/s ...) shown with the bar or the next line."""
        self.figures.update(figures)
        if self._bar is not None:
            self._bar.set_postfix({k: _fmt(v) for k, v in self.figures.items()}, refresh=False)

    def update(self, k: int = 1) -> None:
        before = self.n
        self.n += k
        if self._bar is not None:
            self._bar.update(k)
        elif self.enabled and (self.n // self.every > before // self.every or self.n >= self.total > before):
            self._line()

    def write(self, text: str) -> None:
        """A message that does not break the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        elif self.enabled:
            print(text, file=self.stream, flush=True)

    def _line(self) -> None:
        dt = time.perf_counter() - self._t0
        done = self.n - self._start_n
        rate = done / dt if dt > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        pct = 100 * self.n / self.total if self.total else 100.0
        figures = " ".join(f"{k} {_fmt(v)}" for k, v in self.figures.items())
        head = f"[{self.desc}] " if self.desc else ""
        unit = "step" if self.unit == "it" else self.unit
        print(
            f"{head}{unit} {self.n}/{self.total} ({pct:.0f}%){' ' + figures if figures else ''} | "
            f"{rate:.3g} {self.unit}/s, {_clock(dt)} elapsed, ETA {_clock(eta)}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
