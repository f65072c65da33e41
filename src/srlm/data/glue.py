"""GLUE (Wang et al. 2018): the nine tasks from the official files, scored by label-word log-likelihood.

`--data` is the GLUE root (with `CoLA/`, `SST-2/`, ...), one task's folder, or one
file. Layouts handled: CoLA without a header, MRPC's byte-order mark, MNLI as the
official TSV (`sentence1`, `sentence2`, `gold_label` last, 12 or 16 columns) or as jsonl
(`premise`, `hypothesis`, `label` as a word or a Hugging Face index), STS-B's float score.
Splits: `dev` (default, "validation" is an alias) and `train`; GLUE's test files carry
no labels and cannot be scored here.

kind = "loglik": `choices` are the label words, scored as " " + word after the prompt.
STS-B scores the words "0".."5" and predicts their probability-weighted mean (softmax
of the log-likelihoods), a documented choice. Generation also works (fine-tuned
models): `extract` finds the first label word, or for STS-B the first number.
Metrics (fractions, not percent): CoLA Matthews corr.; MRPC, QQP F1 (positive = paraphrase /
duplicate) and accuracy; STS-B Pearson and Spearman; the rest accuracy. A missing
prediction is a class of its own (always wrong), or 2.5 for STS-B, and is counted in `invalid`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import ClassVar

from srlm.data import stats
from srlm.data.io import find_file, read_jsonl, read_tsv
from srlm.data.tasks import Example, Task, register
from srlm.errors import SrlmError


class GlueTask(Task):
    kind = "loglik"
    max_new_tokens = 8
    default_split = "dev"
    folder: ClassVar[str] = ""
    #: each text field's accepted column names (official TSV name first, then jsonl names)
    fields: ClassVar[tuple[tuple[str, ...], ...]] = ()
    label_field: ClassVar[tuple[str, ...]] = ("label",)
    #: raw label values in the order of `choices`
    labels: ClassVar[tuple[str, ...]] = ("0", "1")
    choices: ClassVar[tuple[str, ...]] = ("no", "yes")
    template: ClassVar[str] = ""
    metric: ClassVar[str] = "accuracy"  # accuracy | mcc | f1 | corr
    #: file name stem of the dev split (MNLI has two)
    dev_name: ClassVar[str] = "dev"
    #: column names of a header-less TSV (CoLA)
    no_header: ClassVar[tuple[str, ...] | None] = None
    stop = ("\n",)

    # ------------------------------------------------------------ loading

    def find(self, data: str | Path, split: str) -> Path:
        p = Path(data)
        if p.is_dir() and (p / self.folder).is_dir():
            p = p / self.folder
        stem = self.dev_name if split in ("dev", "validation", "val") else split
        if split == "test":
            raise SrlmError(f"{self.name}: GLUE test files have no labels; evaluate on split 'dev' or 'train'")
        return find_file(
            p,
            [f"{stem}.tsv", f"{stem}.jsonl", f"*{stem}*.tsv", f"*{stem}*.jsonl"],
            f"{self.name} split {split!r}",
            exts=(".tsv", ".jsonl"),
        )

    def source(self, split: str, data: str | None) -> Path:
        if data is None:
            raise SrlmError(f"{self.name}: give the GLUE folder (with {self.folder}/ inside) or a file with --data")
        return self.find(data, split)

    def load(self, split: str = "dev", data: str | None = None, limit: int | None = None) -> list[Example]:
        path = self.source(split, data)
        out: list[Example] = []
        for line, row in self._rows(path):
            where = f"{path}:{line}"
            texts = []
            for names in self.fields:
                v = next((row[n] for n in names if n in row), None)
                if v is None:
                    raise SrlmError(
                        f"{where}: no column {names[0]!r} (or {', '.join(names[1:])}); is this the {self.folder} file?"
                    )
                texts.append(str(v).strip())
            raw = next((row[n] for n in self.label_field if n in row), None)
            answer, meta = self._gold(raw, where)
            ex_id = str(
                next((row[n] for n in ("index", "idx", "id", "pairID") if n in row and str(row[n]) != ""), len(out))
            )
            meta["line"] = line
            out.append(
                Example(
                    id=ex_id, prompt=self.template.format(*texts), answer=answer, choices=list(self.choices), meta=meta
                )
            )
            if limit is not None and len(out) >= limit:
                break
        return out

    def _rows(self, path: Path):
        if path.suffix == ".jsonl":
            yield from read_jsonl(path)
            return
        cols, rows = read_tsv(path, header=self.no_header is None)
        cols = cols or list(self.no_header)
        for line, fields_ in rows:
            if len(fields_) != len(cols):
                raise SrlmError(
                    f"{path}:{line}: {len(fields_)} tab-separated fields, expected {len(cols)} "
                    f"as in the header ({', '.join(cols)})"
                )
            yield line, dict(zip(cols, fields_))

    def _gold(self, raw, where) -> tuple[str, dict]:
        if raw is None or str(raw).strip() in ("", "-1", "-"):
            raise SrlmError(
                f"{where}: no label (column {self.label_field[0]!r}); unlabeled files (GLUE test) cannot be scored"
            )
        s = str(raw).strip()
        if s in self.labels:
            i = self.labels.index(s)
        elif s.isdigit() and int(s) < len(self.choices):  # Hugging Face datasets store label indices
            i = int(s)
        else:
            raise SrlmError(f"{where}: label {s!r} is not one of {', '.join(self.labels)}")
        return self.choices[i], {"label": i}

    # ------------------------------------------------------------ prompting and answers

    def format_prompt(self, example: Example, shots: list[Example] | None = None) -> str:
        return "".join(f"{s.prompt} {s.answer}\n\n" for s in shots or []) + example.prompt

    def extract(self, output: str) -> str | None:
        low = output.lower()
        best = None
        for c in self.choices:
            m = re.search(r"\b" + re.escape(c.lower()) + r"\b", low)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), c)
        return best[1] if best else None

    def choose(self, example: Example, logliks: list[float]) -> str:
        """The prediction from the log-likelihoods of `example.choices` (harness hook)."""
        return example.choices[max(range(len(logliks)), key=logliks.__getitem__)]

    def is_correct(self, prediction: str | None, example: Example) -> bool:
        return prediction is not None and prediction.strip().lower() == example.answer.lower()

    def metrics(self, records):
        n = len(records)
        low = [c.lower() for c in self.choices]
        gold = [low.index(r["gold"].lower()) for r in records]
        pred = [
            low.index(r["extracted"].lower()) if r.get("extracted") and r["extracted"].lower() in low else -1
            for r in records
        ]
        out = {"accuracy": stats.accuracy(gold, pred)}
        if self.metric == "mcc":
            out = {"mcc": stats.matthews_corrcoef(gold, pred), **out}
        elif self.metric == "f1":
            out = {"f1": stats.f1_binary(gold, pred, positive=1), **out}
        out.update(invalid=sum(p < 0 for p in pred), n=n)
        return out

    def protocol(self):
        label = (
            "the label word with the highest log-likelihood after the prompt (or the first label word "
            "generated, with --scoring generate)"
        )
        metrics = {"accuracy": f"fraction of examples whose prediction, {label}, is the gold label"}
        if self.metric == "mcc":
            metrics = {"mcc": "Matthews correlation of predicted and gold labels (CoLA's GLUE metric)", **metrics}
        elif self.metric == "f1":
            metrics = {"f1": "F1 of the positive class (the GLUE metric with accuracy)", **metrics}
        metrics["invalid"] = "predictions that are no label word (counted wrong)"
        return {"metrics": metrics, "references": {}}


@register
class CoLA(GlueTask):
    name, folder, metric = "glue-cola", "CoLA", "mcc"
    no_header = ("source", "label", "original_label", "sentence")
    fields = (("sentence",),)
    template = "{}\nQuestion: Does this sentence make sense?\nAnswer:"


@register
class SST2(GlueTask):
    name, folder = "glue-sst2", "SST-2"
    fields = (("sentence",),)
    choices = ("negative", "positive")
    template = "{}\nQuestion: Is this sentence positive or negative?\nAnswer:"


@register
class MRPC(GlueTask):
    name, folder, metric = "glue-mrpc", "MRPC", "f1"
    fields = (("#1 String", "sentence1"), ("#2 String", "sentence2"))
    label_field = ("Quality", "label")
    template = "Sentence 1: {}\nSentence 2: {}\nQuestion: Do both sentences mean the same thing?\nAnswer:"


@register
class QQP(GlueTask):
    name, folder, metric = "glue-qqp", "QQP", "f1"
    fields = (("question1",), ("question2",))
    label_field = ("is_duplicate", "label")
    template = "Question 1: {}\nQuestion 2: {}\nQuestion: Do both questions ask the same thing?\nAnswer:"


@register
class MNLI(GlueTask):
    name, folder, dev_name = "glue-mnli", "MNLI", "dev_matched"
    fields = (("sentence1", "premise"), ("sentence2", "hypothesis"))
    label_field = ("gold_label", "label")
    labels = ("entailment", "neutral", "contradiction")
    choices = ("True", "Neither", "False")
    template = "{}\nQuestion: {} True, False or Neither?\nAnswer:"


@register
class MNLIMismatched(MNLI):
    name, dev_name = "glue-mnli-mm", "dev_mismatched"


@register
class QNLI(GlueTask):
    name, folder = "glue-qnli", "QNLI"
    fields = (("question",), ("sentence",))
    labels = ("entailment", "not_entailment")
    choices = ("yes", "no")
    template = "{}\n{}\nQuestion: Does this response answer the question?\nAnswer:"


@register
class RTE(GlueTask):
    name, folder = "glue-rte", "RTE"
    fields = (("sentence1",), ("sentence2",))
    labels = ("entailment", "not_entailment")
    choices = ("True", "False")
    template = "{}\nQuestion: {} True or False?\nAnswer:"


@register
class WNLI(GlueTask):
    name, folder = "glue-wnli", "WNLI"
    fields = (("sentence1",), ("sentence2",))
    choices = ("False", "True")  # WNLI: 1 = entailment
    template = "{}\nQuestion: {} True or False?\nAnswer:"


@register
class STSB(GlueTask):
    name, folder, metric = "glue-stsb", "STS-B", "corr"
    fields = (("sentence1",), ("sentence2",))
    label_field = ("score", "label")
    choices = ("0", "1", "2", "3", "4", "5")
    template = (
        "Sentence 1: {}\nSentence 2: {}\nQuestion: On a scale from 0 to 5, how similar are the two sentences?\nAnswer:"
    )

    def _gold(self, raw, where):
        try:
            score = float(raw)
        except (TypeError, ValueError):
            raise SrlmError(
                f"{where}: similarity score {raw!r} is not a number; unlabeled files (GLUE test) cannot be scored"
            ) from None
        if not 0.0 <= score <= 5.0 or math.isnan(score):
            raise SrlmError(f"{where}: similarity score {score} is outside 0..5")
        return str(score), {"score": score}

    def extract(self, output: str) -> str | None:
        m = re.search(r"\d+(?:\.\d+)?", output)
        return f"{min(5.0, float(m.group(0))):g}" if m else None

    def choose(self, example: Example, logliks: list[float]) -> str:
        top = max(logliks)
        w = [math.exp(x - top) for x in logliks]
        return repr(sum(i * wi for i, wi in enumerate(w)) / sum(w))

    def is_correct(self, prediction: str | None, example: Example) -> bool:
        """Within 0.5 of the gold similarity (for per-example records; the metrics are correlations)."""
        try:
            return prediction is not None and abs(float(prediction) - float(example.answer)) <= 0.5
        except ValueError:
            return False

    def metrics(self, records):
        gold = [float(r["gold"]) for r in records]
        pred, invalid = [], 0
        for r in records:
            try:
                pred.append(float(r["extracted"]))
            except (TypeError, ValueError):
                pred.append(2.5)
                invalid += 1
        return {
            "pearson": stats.pearson(gold, pred),
            "spearman": stats.spearman(gold, pred),
            "invalid": invalid,
            "n": len(records),
        }

    def protocol(self):
        return {
            "metrics": {
                "pearson": "Pearson correlation of predicted and gold similarity; the prediction is the expected score "
                "under the label words' log-likelihoods (or the number generated)",
                "spearman": "Spearman rank correlation of the same",
                "invalid": "predictions that are no number (scored as 2.5)",
            },
            "references": {},
        }


GLUE_TASKS = (
    "glue-cola",
    "glue-sst2",
    "glue-mrpc",
    "glue-qqp",
    "glue-stsb",
    "glue-mnli",
    "glue-mnli-mm",
    "glue-qnli",
    "glue-rte",
    "glue-wnli",
)


def available_glue_tasks(data: str | Path, split: str = "dev") -> list[str]:
    """GLUE task names whose files for `split` are found under `data`."""
    from srlm.data.tasks import get_task

    found = []
    for name in GLUE_TASKS:
        try:
            get_task(name).find(data, split)
            found.append(name)
        except SrlmError:
            pass
    return found
