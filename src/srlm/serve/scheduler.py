"""The scheduler: one thread that owns the engine and runs every request through one running batch.

Requests (`Job`s) wait in a queue; between two decode steps the thread prefills the waiting ones
that fit (`max_batch` rows in all) and they join the batch (srlm.infer.batch.DecodeBatch);
a row that finishes leaves at once, and a cancelled job (its client gone) leaves before the
next step. Token ids become text here (srlm.infer.textstream: stop strings end rows as soon
as they appear); each job's events of one step go to its `sink` in one call, from this thread.

The thread survives anything a request does: a failing prefill fails that request alone, a
failing step fails the requests in the batch and starts a fresh batch. Requests are checked
before they get here (srlm.serve.app), so these are bugs, reported as such.
"""

from __future__ import annotations

import itertools
import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from srlm.errors import SrlmError
from srlm.infer.batch import DecodeBatch, RowRequest, RowStep
from srlm.infer.textstream import TextStream

log = logging.getLogger("srlm.serve")


@dataclass
class Delta:
    """New text of one choice; `tokens` are the RowSteps that made it (for logprobs)."""

    choice: int
    text: str
    tokens: list[RowStep]


@dataclass
class Finish:
    choice: int
    #: "stop" (a stop id or stop string) or "length"
    reason: str


@dataclass
class Done:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    message: str


@dataclass
class Job:
    """One API request: its prompts, each continued `n` times (choice = prompt index * n + sample index)."""

    rows: list[RowRequest]
    stop_strings: list[str]
    #: receives a list of events (Delta, Finish, Done, Failed), called from the scheduler thread
    sink: Callable[[list], None]
    #: the client reads the text as it grows; otherwise it only wants the end (events come at the finish)
    stream: bool = True
    id: int = field(default_factory=itertools.count().__next__)
    cancelled: bool = False

    @property
    def n_rows(self) -> int:
        return sum(r.n for r in self.rows)


class _Choice:
    def __init__(self, tokenizer, prompt, stop_strings, incremental: bool):
        self.stream = TextStream(tokenizer, prompt, stop_strings, incremental=incremental or bool(stop_strings))
        self.tokens = 0
        self.steps: list[RowStep] = []  # kept for logprobs until the end, when the text is not streamed
        self.done = False


class Scheduler:
    def __init__(
        self,
        engine,
        max_batch: int = 16,
        max_len: int | None = None,
        max_waiting: int = 256,
        prefill_tokens: int = 4096,
    ):
        """`prefill_tokens`: prompt tokens prefilled at most between two steps (at least one job is always
        admitted), so a burst of long prompts does not stall the rows already streaming."""
        self.engine = engine
        self.max_batch = max_batch
        self.max_len = max_len
        self.max_waiting = max_waiting
        self.prefill_tokens = prefill_tokens
        self.batch = DecodeBatch(engine, max_len)
        self._waiting: deque[Job] = deque()
        self._running: dict[int, Job] = {}
        self._rows: dict[int, tuple[Job, int]] = {}  # row key -> (job, choice)
        self._choices: dict[int, list[_Choice]] = {}
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # ------------------------------------------------------------------ control (any thread)
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="srlm-scheduler", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Job) -> bool:
        """Queue a job; False when `max_waiting` jobs already wait (the caller answers 429)."""
        if job.n_rows > self.max_batch:
            raise SrlmError(f"a request of {job.n_rows} rows can never run in a batch of {self.max_batch}")
        with self._cv:
            if len(self._waiting) >= self.max_waiting:
                return False
            self._waiting.append(job)
            self._cv.notify()
        return True

    def cancel(self, job: Job) -> None:
        """Free the job's rows before the next step (a no-op once it is done)."""
        job.cancelled = True
        with self._cv:
            self._cv.notify()

    def stats(self) -> dict:
        with self._cv:
            return {
                "running_rows": len(self._rows),
                "running_requests": len(self._running),
                "waiting_requests": len(self._waiting),
                "steps": self.steps,
            }

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not self._rows and not self._any_cancelled():
                    self._cv.wait()
                if self._stop:
                    break
                admitted = self._take_admissible()
            try:
                self._drop_cancelled()
                if admitted:
                    self._admit(admitted)
                if self._rows:
                    self._step()
            except Exception:  # a bug in the bookkeeping: drop what runs, keep serving
                self._reset("scheduler error")
        for job in list(self._running.values()) + list(self._waiting):
            self._send(job, [Failed("the server is shutting down")])

    def _reset(self, what: str) -> None:
        log.error("%s:\n%s", what, traceback.format_exc())
        jobs = list(self._running.values())
        self.batch = DecodeBatch(self.engine, self.max_len)
        for job in jobs:
            self._forget(job)
            self._send(job, [Failed("internal error while generating; the request was dropped (see the server log)")])

    def _any_cancelled(self) -> bool:
        return any(job.cancelled for job in self._running.values())

    def _take_admissible(self) -> list[Job]:
        free = self.max_batch - len(self._rows)
        budget = self.prefill_tokens
        out = []
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                continue
            cost = sum(len(r.prompt) for r in job.rows)
            if job.n_rows > free or (out and cost > budget):
                break  # first come, first served: a big job is not overtaken by small ones
            out.append(self._waiting.popleft())
            free -= job.n_rows
            budget -= cost
        return out

    def _drop_cancelled(self) -> None:
        gone = [job for job in self._running.values() if job.cancelled]
        for job in gone:
            keys = [k for k, (j, _) in self._rows.items() if j is job]
            self.batch.remove(keys)
            self._forget(job)

    def _forget(self, job: Job) -> None:
        with self._cv:
            for k in [k for k, (j, _) in self._rows.items() if j is job]:
                del self._rows[k]
            self._running.pop(job.id, None)
        self._choices.pop(job.id, None)

    def _send(self, job: Job, events: list) -> None:
        try:
            job.sink(events)
        except Exception:  # the receiving side is gone (e.g. its event loop closed): nobody is listening
            job.cancelled = True

    def _admit(self, jobs: list[Job]) -> None:
        try:
            keys = self.batch.add([r for job in jobs for r in job.rows])
        except Exception as e:
            if len(jobs) == 1:
                self._fail(jobs[0], e)
                return
            for job in jobs:  # find the culprit: the others still run
                self._admit([job])
            return
        it = iter(keys)
        tok = self.engine.tokenizer
        with self._cv:
            for job in jobs:
                choices = []
                for r in job.rows:
                    for key in next(it):
                        self._rows[key] = (job, len(choices))
                        choices.append(_Choice(tok, r.prompt, job.stop_strings, job.stream))
                self._choices[job.id] = choices
                self._running[job.id] = job

    def _fail(self, job: Job, error: Exception) -> None:
        if isinstance(error, SrlmError):  # a request the app should have refused: say why all the same
            self._send(job, [Failed(str(error))])
            return
        log.error("request failed:\n%s", traceback.format_exc())
        self._send(job, [Failed("internal error while generating; the request was dropped (see the server log)")])

    def _step(self) -> None:
        try:
            outs = self.batch.step()
        except Exception:
            self._reset("decode step failed")
            return
        self.steps += 1
        events: dict[int, list] = {}
        stopped_keys = []
        for out in outs:
            job, index = self._rows[out.key]
            choice = self._choices[job.id][index]
            choice.tokens += 1
            text = "" if out.finish == "stop" else choice.stream.push(out.token)  # a stop id is not shown
            reason = out.finish
            if choice.stream.stopped and reason is None:
                reason = "stop"
                stopped_keys.append(out.key)
            if reason is not None:
                text += choice.stream.finish()
            if choice.stream.incremental:
                events.setdefault(job.id, []).append(Delta(index, text, [out]))
            else:
                if out.logprob is not None:
                    choice.steps.append(out)
                if reason is not None:
                    events.setdefault(job.id, []).append(Delta(index, text, choice.steps))
            if reason is not None:
                choice.done = True
                events[job.id].append(Finish(index, "stop" if choice.stream.stopped else reason))
                with self._cv:
                    del self._rows[out.key]
        if stopped_keys:
            self.batch.remove(stopped_keys)
        for job_id, ev in events.items():
            job = self._running[job_id]
            choices = self._choices[job_id]
            if all(c.done for c in choices):
                ev.append(Done(sum(len(r.prompt) for r in job.rows), sum(c.tokens for c in choices)))
                self._forget(job)
            self._send(job, ev)
