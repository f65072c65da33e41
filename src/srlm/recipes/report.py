"""The scorecard of a recipe run: `report.json`, `report.md` and PNG plots in the run folder.

`write_report(out_dir, summary)` takes the runner's summary -- recipe name, and per stage its
kind, checkpoint, wall time, training log (`metrics.jsonl` of the stage) and evaluation metrics
-- and writes:

- `report.json`: the summary as given (plus the plot file names), for machines;
- `report.md`: a table of accuracy per stage (overall and per difficulty level when the task
  reports `accuracy@dK`), what each stage cost, and how to reproduce each number with `srlm eval`;
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
                line, = ax.plot(xs, ys, style, alpha=0.3 if w > 1 else 1.0, linewidth=0.8)
                label = f"{name} {key}" + (f" ({w}-step mean)" if w > 1 else "")
                if w > 1:
                    ax.plot(xs[w - 1:], np.convolve(ys, np.ones(w) / w, mode="valid"), style, color=line.get_color(),
                            linewidth=2, label=label)
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
            row = [s["name"], f"`{s.get('checkpoint', '')}`", _pct(m.get("accuracy"))] + [_pct(m.get(lv)) for lv in levels]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## What each stage cost", "", "| stage | kind | steps | wall (s) | final loss | notes |", "|---|---|---|---|---|---|"]
    for s in stages:
        log = read_log(s.get("log"))
        _, losses = _series(log, "loss")
        notes = "; ".join(f"{k} {v}" for k, v in (s.get("notes") or {}).items())
        lines.append(f"| {s['name']} | {s.get('kind', '')} | {s.get('steps', '—')} | "
                     f"{s.get('wall_s', 0):.0f} | {losses[-1]:.3f} | {notes} |" if losses else
                     f"| {s['name']} | {s.get('kind', '')} | {s.get('steps', '—')} | {s.get('wall_s', 0):.0f} | — | {notes} |")
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
    summary = {**summary, "plots": plots}
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "report.md").write_text(_markdown(summary, plots), encoding="utf-8")
    return {"json": out / "report.json", "md": out / "report.md", **{p: out / p for p in plots}}
