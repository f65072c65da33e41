"""SQuAD v1.1 and v2.0 from the official JSON (`data[].paragraphs[].qas[]`): generative answers.

Scoring follows the official evaluate-v1.1.py / evaluate-v2.0.py exactly: answers are
normalised (lower-case, punctuation removed, articles a/an/the removed, whitespace
collapsed); exact match and token F1 are maximised over the gold answers. v2.0: gold
answers that normalise to nothing are dropped, an unanswerable question's gold is "",
the empty prediction is the answer to it, and F1 against an empty side is 1 only when
both are empty. Metrics are fractions (the official scripts print percent).
The model answers on one line; for v2.0 "unanswerable" (or "no answer") means "".
"""

from __future__ import annotations

import re
import string
from collections import Counter

from srlm.data.io import find_file, read_json
from srlm.data.tasks import Example, Task, register
from srlm.errors import SrlmError

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_v1(prediction: str, gold: str) -> float:
    """evaluate-v1.1.py f1_score: 0 when nothing is shared (including an empty side)."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1_v2(prediction: str, gold: str) -> float:
    """evaluate-v2.0.py compute_f1: with an empty side, 1 only when both are empty."""
    p = normalize_answer(prediction).split() if prediction else []
    g = normalize_answer(gold).split() if gold else []
    if not p or not g:
        return float(p == g)
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: list[str], v2: bool) -> list[str]:
    if not v2:
        return answers
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def score_one(prediction: str, answers: list[str], v2: bool) -> tuple[float, float]:
    """(exact match, F1) of one prediction, maximised over the gold answers."""
    golds = gold_answers(answers, v2)
    f1 = f1_v2 if v2 else f1_v1
    return max(exact_match(prediction, a) for a in golds), max(f1(prediction, a) for a in golds)


@register
class SQuAD(Task):
    name = "squad"
    kind = "generate"
    max_new_tokens = 32
    default_split = "dev"
    v2: bool = False
    stop = ("\n",)

    def source(self, split: str, data: str | None):
        ver = "2.0" if self.v2 else "1.1"
        if data is None:
            raise SrlmError(f"{self.name}: give the official JSON (e.g. dev-v{ver}.json) with --data")
        return find_file(
            data,
            [f"{split}-v{ver}*.json", f"*{split}*v{ver}*.json", f"*{split}*.json"],
            f"{self.name} split {split!r}",
            exts=(".json",),
        )

    def load(self, split: str = "dev", data: str | None = None, limit: int | None = None) -> list[Example]:
        ver = "2.0" if self.v2 else "1.1"
        path = self.source(split, data)
        obj = read_json(path)
        if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
            raise SrlmError(f"{path}: expected the SQuAD JSON layout {{'data': [{{'paragraphs': [{{'qas': ...}}]}}]}}")
        version = str(obj.get("version", ""))
        if version and version.lstrip("v") != ver:
            raise SrlmError(
                f"{path}: this is SQuAD version {version}; use task "
                f"{'squad2' if version.lstrip('v').startswith('2') else 'squad'}"
            )
        out = []
        for ai, article in enumerate(obj["data"]):
            for pi, para in enumerate(article.get("paragraphs", [])):
                context = para.get("context", "")
                for qi, qa in enumerate(para.get("qas", [])):
                    where = f"{path}: data[{ai}].paragraphs[{pi}].qas[{qi}]"
                    if "id" not in qa or "question" not in qa:
                        raise SrlmError(f"{where}: missing 'id' or 'question'")
                    answers = [a["text"] for a in qa.get("answers", [])]
                    impossible = bool(qa.get("is_impossible", False)) or (self.v2 and not answers)
                    if not self.v2 and not answers:
                        raise SrlmError(f"{where}: no answers; unanswerable questions are SQuAD v2.0: use task squad2")
                    out.append(
                        Example(
                            id=str(qa["id"]),
                            prompt=f"{context.strip()}\n\nQuestion: {qa['question'].strip()}",
                            answer="" if impossible else answers[0],
                            meta={"answers": answers, "is_impossible": impossible, "title": article.get("title", "")},
                        )
                    )
                    if limit is not None and len(out) >= limit:
                        return out
        return out

    def _instruction(self) -> str:
        extra = ' If the passage does not contain the answer, answer "unanswerable".' if self.v2 else ""
        return f"Answer the question with a short span copied from the passage.{extra}"

    def format_prompt(self, example: Example, shots: list[Example] | None = None) -> str:
        parts = [self._instruction() + "\n\n"]
        for s in shots or []:
            parts.append(f"Passage: {s.prompt}\nAnswer: {s.answer or 'unanswerable'}\n\n")
        parts.append(f"Passage: {example.prompt}\nAnswer:")
        return "".join(parts)

    def chat_messages(self, example: Example, shots: list[Example] | None = None) -> list[dict[str, str]]:
        msgs = []
        for s in shots or []:
            msgs += [
                {"role": "user", "content": f"{self._instruction()}\n\nPassage: {s.prompt}"},
                {"role": "assistant", "content": s.answer or "unanswerable"},
            ]
        msgs.append({"role": "user", "content": f"{self._instruction()}\n\nPassage: {example.prompt}"})
        return msgs

    def extract(self, output: str) -> str | None:
        lines = output.strip().splitlines()
        ans = lines[0].strip() if lines else ""
        if self.v2 and normalize_answer(ans) in ("", "unanswerable", "no answer", "none", "cannot be answered"):
            return ""
        return ans

    def is_correct(self, prediction: str | None, example: Example) -> bool:
        return prediction is not None and score_one(prediction, example.meta["answers"], self.v2)[0] == 1.0

    def metrics(self, records):
        """Official evaluate script numbers (as fractions), from records with `extracted` and `meta.answers`."""
        n = len(records)
        em, f1, has = [], [], []
        for r in records:
            answers = r["meta"]["answers"]
            # None is a missing prediction: wrong even for an unanswerable question ("" abstains)
            e, f = (0.0, 0.0) if r["extracted"] is None else score_one(r["extracted"], answers, self.v2)
            em.append(e)
            f1.append(f)
            has.append(bool(answers))
        out = {"exact_match": sum(em) / n if n else 0.0, "f1": sum(f1) / n if n else 0.0, "n": n}
        if self.v2:
            for tag, want in (("HasAns", True), ("NoAns", False)):
                idx = [i for i in range(n) if has[i] == want]
                if idx:
                    out[f"{tag}_exact"] = sum(em[i] for i in idx) / len(idx)
                    out[f"{tag}_f1"] = sum(f1[i] for i in idx) / len(idx)
                out[f"{tag}_total"] = len(idx)
        return out

    def protocol(self):
        script = "v2.0" if self.v2 else "v1.1"
        metrics = {
            "exact_match": f"the official SQuAD {script} evaluate script's exact match (normalised: lower "
            "case, no punctuation or articles), best over the gold answers",
            "f1": f"the official {script} script's token F1, best over the gold answers",
        }
        if self.v2:
            metrics["HasAns_exact"] = "the same on answerable questions (HasAns_f1, and NoAns_* on unanswerable ones)"
        return {"metrics": metrics, "references": {"SQuAD evaluate script": script}}


@register
class SQuAD2(SQuAD):
    name = "squad2"
    v2 = True
