"""`srlm score --task NAME --data FILE --predictions FILE`: official metrics for predictions made elsewhere.

Prediction formats:
- SQuAD (`squad`, `squad2`): the official `{question id: answer text}` JSON; answers are
  scored verbatim (v2.0: "" answers "unanswerable").
- GLUE (`glue-*`): a TSV of `index<TAB>prediction` rows as in GLUE submission files (a header
  row is optional); `index` is the data file's `index` column, or the 0-based row number for
  files without one (CoLA, MRPC). A prediction is a raw label of the file ("entailment",
  "1"), a label word of the task ("yes", "True"), or a label index; STS-B a number.
- Any generation task (`gsm8k`, `math`, `math500`, synthetic ...): jsonl, one object per line
  with the model's text in `output` (or `completion`, `response`, `generated_text`, `text`),
  run through the task's answer extraction. Lines are matched to examples by an `id` field
  when the first line has one (the dataset's id: MATH-500 `unique_id`, MATH `idx`, GSM8K the
  line's `id` or else the record's 0-based position in its file, "0", "1", ...; the ids `srlm eval`
  writes in its records), otherwise by position. GSM8K's lm-eval metrics depend on the prompt
  template the outputs were made with (`--prompt`, default gsm8k: gsm8k_cot's strict-match looks
  for "The answer is N.").
Ids not in the data are an error; missing ids are an error unless `--allow-missing`, which
scores them as wrong and reports how many there were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from srlm.data.io import read_json, read_jsonl, read_tsv
from srlm.data.tasks import Example, Task
from srlm.errors import SrlmError

OUTPUT_FIELDS = ("output", "completion", "response", "generated_text", "text")


def read_squad_predictions(path: Path) -> dict[str, Any]:
    preds = read_json(path)
    if not isinstance(preds, dict):
        raise SrlmError(f'{path}: expected the official SQuAD predictions JSON {{"question id": "answer"}}')
    for k, v in preds.items():
        if not isinstance(v, str):
            raise SrlmError(f"{path}: prediction for id {k!r} is {type(v).__name__}, expected a string")
    return preds


def glue_label(task: Task, value: str, where: str) -> str:
    s = value.strip()
    if task.name == "glue-stsb":
        try:
            return repr(float(s))
        except ValueError:
            raise SrlmError(f"{where}: STS-B prediction {s!r} is not a number") from None
    if s in task.labels:
        return task.choices[task.labels.index(s)]
    low = [c.lower() for c in task.choices]
    if s.lower() in low:
        return task.choices[low.index(s.lower())]
    if s.isdigit() and int(s) < len(task.choices):
        return task.choices[int(s)]
    raise SrlmError(
        f"{where}: prediction {s!r} is not a label of {task.name} "
        f"({', '.join(task.labels)}; or {', '.join(task.choices)}; or an index)"
    )


def read_glue_predictions(path: Path, task: Task) -> dict[str, str]:
    _, rows = read_tsv(path, header=False)
    preds: dict[str, str] = {}
    for line, fields in rows:
        where = f"{path}:{line}"
        if len(fields) < 2:
            raise SrlmError(f"{where}: expected 'index<TAB>prediction', got {len(fields)} field(s)")
        idx, value = fields[0].strip(), fields[1]
        if line == 1 and not idx.lstrip("-").isdigit() and idx.lower() in ("index", "id", "idx"):
            continue  # header
        if idx in preds:
            raise SrlmError(f"{where}: index {idx} predicted twice")
        preds[idx] = glue_label(task, value, where)
    return preds


def read_output_predictions(path: Path, examples: list[Example], task: Task | None = None) -> dict[str, str]:
    rows = list(read_jsonl(path))
    if not rows:
        raise SrlmError(f"{path}: no predictions")
    by_id = "id" in rows[0][1]
    preds: dict[str, str] = {}
    for i, (line, obj) in enumerate(rows):
        where = f"{path}:{line}"
        text = next((obj[f] for f in OUTPUT_FIELDS if f in obj), None)
        if not isinstance(text, str):
            raise SrlmError(f"{where}: no output text; expected a string field {' or '.join(map(repr, OUTPUT_FIELDS))}")
        if by_id:
            if "id" not in obj:
                raise SrlmError(
                    f"{where}: no 'id' field, but the first line has one; give ids on every line or on none"
                )
            key = task.canonical_id(str(obj["id"])) if task is not None else str(obj["id"])
        else:
            if i >= len(examples):
                raise SrlmError(
                    f"{path}: {len(rows)} predictions for {len(examples)} examples, matched by position "
                    "(add an 'id' field to match by id)"
                )
            key = examples[i].id
        if key in preds:
            raise SrlmError(f"{where}: id {key!r} predicted twice")
        preds[key] = text
    return preds


def score(
    task: Task, examples: list[Example], predictions: str | Path, allow_missing: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, records) for a predictions file against loaded gold `examples`."""
    path = Path(predictions)
    if not path.is_file():
        raise SrlmError(f"{path}: predictions file not found")
    family = "squad" if task.name in ("squad", "squad2") else "glue" if task.name.startswith("glue-") else "output"
    if family == "squad":
        preds = read_squad_predictions(path)
    elif family == "glue":
        preds = read_glue_predictions(path, task)
    else:
        preds = read_output_predictions(path, examples, task)
    ids = {ex.id for ex in examples}
    unknown = [k for k in preds if k not in ids]
    if unknown:
        expected = f" (expected ids like {examples[0].id!r}" + (
            f" ... {examples[-1].id!r})" if len(examples) > 1 else ")"
        )
        raise SrlmError(
            f"{path}: {len(unknown)} prediction(s) for ids not in the data, e.g. {', '.join(unknown[:5])}"
            f"{expected if examples else ''}; are the predictions for this split and file?"
        )
    missing = [ex.id for ex in examples if ex.id not in preds]
    if missing and not allow_missing:
        raise SrlmError(
            f"{path}: no prediction for {len(missing)} of {len(examples)} examples, e.g. "
            f"{', '.join(missing[:5])}; pass --allow-missing to score them as wrong"
        )
    records = []
    for ex in examples:
        if ex.id in preds:
            out = preds[ex.id]
            extracted = out if family != "output" else task.extract(out)
            correct = bool(task.is_correct(extracted, ex))
        else:
            out = extracted = None
            correct = False
        records.append(
            {
                "id": ex.id,
                "output": out or "",
                "extracted": extracted,
                "gold": ex.answer,
                "correct": correct,
                "meta": ex.meta,
            }
        )
    metrics = dict(task.metrics(records))
    metrics["missing"] = len(missing)
    return metrics, records
