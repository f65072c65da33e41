"""The scorecard of a recipe run: `report.json`, `report.md` and PNG plots in the run folder.

`write_report(out_dir, summary)` takes the runner's summary -- recipe name, and per stage its
kind, checkpoint, wall time, training log (`metrics.jsonl` of the stage) and evaluation metrics
-- and writes:

- `report.json`: the summary as given (plus the plot file names), for machines;
- `report.md`: a table of accuracy per stage (overall and per difficulty level when the task
  reports `accuracy@dK`), each with its 95% interval (Wilson) and n; the change from each stage of
  the main line to the next, with its 95% interval from the paired per-problem outcomes (the
  evaluations' records), marked when the interval excludes 0; what each stage cost, and how to
  reproduce each number with `srlm eval`;
- `loss.png` (training loss per stage against step), `reward.png` (GRPO reward / accuracy per
  step, when a GRPO stage ran), `accuracy.png` (accuracy per stage, grouped by difficulty).

Plots use matplotlib's Agg backend, so no display is needed. A stage without a training log
(e.g. the untrained `base` evaluation) simply has no curve.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np


def read_log(path: str | Path | None) -> list[dict[str, Any]]:
    """Records of a `metrics.jsonl`; a missing file or a torn last line gives what could be read."""
    if not path or not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict):
            out.append(r)
    return out


def _series(log: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in log:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and "step" in r:
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def _levels(stages: list[dict]) -> list[str]:
    keys = set()
    for s in stages:
        for task_metrics in (s.get("eval") or {}).values():
            keys |= {k for k in task_metrics if re.fullmatch(r"accuracy@d\d+", k)}
    return sorted(keys, key=lambda k: int(k.split("@d")[1]))


def _plots(out: Path, stages: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    logs = [(s["name"], read_log(s.get("log"))) for s in stages]
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for name, log in logs:
        xs, ys = _series(log, "loss")
        if xs:
            ax.plot(xs, ys, label=name)
            drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("training loss per stage")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=100)
        files.append("loss.png")
    plt.close(fig)

    rl = [(n, log) for n, log in logs if _series(log, "reward")[0]]
    if rl:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, log in rl:
            for key, style in (("reward", "-"), ("accuracy", "--")):
                xs, ys = _series(log, key)
                if not xs:
                    continue
                # a step's few prompts make a noisy curve: faint per step, bold as a moving mean
                w = max(1, len(ys) // 10)
                (line,) = ax.plot(xs, ys, style, alpha=0.3 if w > 1 else 1.0, linewidth=0.8)
                label = f"{name} {key}" + (f" ({w}-step mean)" if w > 1 else "")
                if w > 1:
                    ax.plot(
                        xs[w - 1 :],
                        np.convolve(ys, np.ones(w) / w, mode="valid"),
                        style,
                        color=line.get_color(),
                        linewidth=2,
                        label=label,
                    )
                else:
                    line.set_label(label)
        ax.set_xlabel("step")
        ax.set_ylabel("mean over rollouts")
        ax.set_title("GRPO reward and accuracy of rollouts")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "reward.png", dpi=100)
        files.append("reward.png")
        plt.close(fig)

    evald = [s for s in stages if s.get("eval")]
    if evald:
        task = next(iter(evald[0]["eval"]))
        cols = ["accuracy"] + _levels(evald)
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cols) * len(evald) / 2), 4))
        width = 0.8 / len(evald)
        for i, s in enumerate(evald):
            m = s["eval"].get(task, {})
            vals = [100 * float(m.get(c) or 0.0) for c in cols]
            ax.bar([j + i * width for j in range(len(cols))], vals, width, label=s["name"])
        ax.set_xticks([j + width * (len(evald) - 1) / 2 for j in range(len(cols))])
        ax.set_xticklabels(["all" if c == "accuracy" else c.split("@")[1] for c in cols])
        ax.set_ylabel(f"{task} accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title("held-out accuracy after each stage")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "accuracy.png", dpi=100)
        files.append("accuracy.png")
        plt.close(fig)
    return files


def _pct(v) -> str:
    return "—" if v is None else f"{100 * float(v):.1f}"


def _with_ci(m: dict, key: str) -> str:
    """`54.5 (52.0-57.0)`: an accuracy and its 95% Wilson interval, from the metrics' n."""
    from srlm.eval.intervals import wilson

    v = m.get(key)
    n = m.get("n" if key == "accuracy" else "n@" + key.split("@")[1])
    if v is None or not n:
        return _pct(v)
    lo, hi = wilson(round(float(v) * n), int(n))
    return f"{100 * float(v):.1f} ({100 * lo:.1f}-{100 * hi:.1f})"


def _outcomes(path: str | None, level: str | None) -> dict[str, bool]:
    """id -> correct from an evaluation's records, for one difficulty level (`d2`) or all."""
    out = {}
    for r in read_log(path):
        meta = r.get("meta") or {}
        d = r.get("difficulty", meta.get("difficulty"))
        if level is None or (d is not None and f"d{d}" == level):
            out[str(r.get("id"))] = bool(r.get("correct"))
    return out


def changes(stages: list[dict], task: str) -> list[dict]:
    """The change from each evaluated main-line stage to the next: per level, diff and 95% interval."""
    from srlm.eval.intervals import paired_difference

    line = [
        s for s in stages if s.get("eval", {}).get(task) is not None and s.get("chain", True) and s.get("eval_records")
    ]
    levels = [None] + [lv.split("@")[1] for lv in _levels(line)]
    out = []
    for a, b in zip(line, line[1:]):
        row = {"from": a["name"], "to": b["name"]}
        for lv in levels:
            row[lv or "all"] = paired_difference(_outcomes(a["eval_records"], lv), _outcomes(b["eval_records"], lv))
        out.append(row)
    return out


def _signed(d: dict) -> str:
    if not d["n"]:
        return "—"
    mark = " *" if d["low"] > 0 or d["high"] < 0 else ""
    return f"{100 * d['diff']:+.1f} ({100 * d['low']:+.1f}, {100 * d['high']:+.1f}){mark}"


def _markdown(summary: dict, plots: list[str]) -> str:
    stages = summary["stages"]
    lines = [f"# srlm run: {summary.get('recipe', '?')}", ""]
    if summary.get("description"):
        lines += [summary["description"].strip(), ""]
    evald = [s for s in stages if s.get("eval")]
    for task in dict.fromkeys(t for s in evald for t in s["eval"]):
        levels = _levels([s for s in evald if task in s["eval"]])
        n = next((s["eval"][task].get("n") for s in evald if task in s["eval"]), None)
        lines += [f"## {task}: held-out accuracy (%) after each stage" + (f", n = {n}" if n else ""), ""]
        head = ["stage", "checkpoint", "all"] + [lv.split("@")[1] for lv in levels]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in evald:
            m = s["eval"].get(task)
            if m is None:
                continue
            row = [s["name"], f"`{s.get('checkpoint', '')}`", _with_ci(m, "accuracy")] + [
                _with_ci(m, lv) for lv in levels
            ]
            lines.append("| " + " | ".join(row) + " |")
        first = next(s["eval"][task] for s in evald if task in s["eval"])
        per_level = ", ".join(str(first.get("n@" + lv.split("@")[1], "?")) for lv in levels)
        lines += [
            "",
            "Each figure: accuracy % (95% Wilson interval)" + (f"; n per level: {per_level}" if levels else "") + ".",
            "",
        ]
        diffs = changes(stages, task)
        if diffs:
            lines += [f"### {task}: change from stage to stage (points, 95% interval, paired by problem)", ""]
            head = ["change", "all"] + [lv.split("@")[1] for lv in levels]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for d in diffs:
                lines.append(
                    "| "
                    + " | ".join(
                        [f"{d['from']} -> {d['to']}", _signed(d["all"])]
                        + [_signed(d.get(lv.split("@")[1], {"n": 0})) for lv in levels]
                    )
                    + " |"
                )
            lines += ["", "`*`: the interval excludes 0, so the change is larger than this held-out set's noise.", ""]
    lines += [
        "## What each stage cost",
        "",
        "| stage | kind | steps | wall (s) | final loss | notes |",
        "|---|---|---|---|---|---|",
    ]
    for s in stages:
        log = read_log(s.get("log"))
        _, losses = _series(log, "loss")
        notes = "; ".join(f"{k} {v}" for k, v in (s.get("notes") or {}).items())
        final_loss = f"{losses[-1]:.3f}" if losses else "—"
        cells = [s["name"], s.get("kind", ""), s.get("steps", "—"), f"{s.get('wall_s', 0):.0f}", final_loss, notes]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    total = sum(float(s.get("wall_s") or 0) for s in stages)
    lines += ["", f"Total wall time: {total:.0f} s ({total / 60:.1f} min)."]
    if summary.get("machine"):
        lines.append(f"Machine: {summary['machine']}.")
    lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    repro = [s for s in evald if s.get("eval_command")]
    if repro:
        lines += ["## Reproduce", "", "Each number above comes from the saved checkpoint; re-run with:", "", "```"]
        lines += [s["eval_command"] for s in repro] + ["```", ""]
    if summary.get("next"):
        lines += ["## Next", "", summary["next"], ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, summary: dict[str, Any]) -> dict[str, Path]:
    """Write report.json, report.md and the plots into `out_dir`; returns their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(out, summary["stages"])
    tasks = dict.fromkeys(t for s in summary["stages"] for t in (s.get("eval") or {}))
    summary = {**summary, "plots": plots, "changes": {t: changes(summary["stages"], t) for t in tasks}}
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "report.md").write_text(_markdown(summary, plots), encoding="utf-8")
    return {"json": out / "report.json", "md": out / "report.md", **{p: out / p for p in plots}}
