"""GRPO step time: srlm's GRPO stage vs TRL's GRPOTrainer on the same tiny model and workload.

Workloads, beta 0 (no reference model), one optimisation pass per rollout batch, both frameworks
loading the same HF folder with a BPE tokenizer trained here:
- `--shape tiny` (FACTS.md): a random 4-layer 256-wide Qwen2 model, 1 prompt x 4 completions x
  32 new tokens per step;
- `--shape qwen2.5-0.5b`: the Qwen2.5-0.5B body (24 layers x 896, GQA 14/2, tied head) with the
  tokenizer's 1024-id vocabulary (the real 151,936-id head is left out: no tokenizer for it is
  available offline), 1 prompt x 8 completions x 128 new tokens per step.
Reported: median seconds per optimizer step after warm-up (generation + reward + update), and the ratio.

    python benchmarks/bench_grpo.py --steps 20 --dtype bf16 --framework both --threads 2
    python benchmarks/bench_grpo.py --shape qwen2.5-0.5b --steps 6 --dtype bf16 --threads 2

TRL is optional (`pip install trl`); without it only srlm's figure is printed. Completions may
end early on an end-of-turn token; the mean completion length is printed for both so the work
compared is visible.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "Ann has 12 apples. Bob has 5 more apples than Ann. How many apples does Bob have?"


#: shape -> (preset and overrides, completions per step, new tokens per completion)
SHAPES = {"tiny": (("base", {"num_hidden_layers": 4}), 4, 32), "qwen2.5-0.5b": (("qwen2.5-0.5b", {}), 8, 128)}


def make_checkpoint(folder: Path, shape: str = "tiny") -> Path:
    from srlm.data.synthetic import corpus_lines
    from srlm.model import CausalLM, preset, save
    from srlm.tokenizer import train_bpe

    tok = train_bpe(list(corpus_lines(400)), 1024)
    torch.manual_seed(0)
    (name, over), _, _ = SHAPES[shape]
    cfg = preset(name, **over, vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return save(CausalLM(cfg), folder / "model", tokenizer=tok)


def bench_srlm(ckpt: Path, steps: int, dtype: str, threads: int, work: Path, g: int = 4, new: int = 32) -> dict:
    import srlm.train.grpo as grpo
    from srlm.data.tasks import Example
    from srlm.train.config import load_config

    grpo.REWARDS["bench_len"] = lambda text, ex, task: float(len(text) % 3)  # varied, so the update is real
    out = work / "srlm"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(
        grpo.GRPOConfig,
        None,
        {
            "out_dir": str(out),
            "model": str(ckpt),
            "steps": steps,
            "batch_size": g,
            "num_generations": g,
            "sampling": {"temperature": 1.0, "max_new_tokens": new},
            "beta": 0.0,
            "num_iterations": 1,
            "dtype": dtype,
            "num_threads": threads,
            "progress": False,
            "log_every": 1,
            "lr": 1e-5,
            "rewards": {"bench_len": 1.0},
            "device": "cpu",
            "task": "synth-gsm",
        },
    )
    model, tok = grpo.prepare(cfg)
    stage = grpo.GRPOStage(cfg, tok, model=model, examples=[Example(id="p", prompt=PROMPT, answer="17")])
    grpo.train(cfg, model, tok, stage, stage_name="grpo")
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in log if "step_time_s" in r][2:]  # skip warm-up
    return {
        "s_per_step": statistics.median(times),
        "steps_timed": len(times),
        "completion_len": statistics.mean(r["completion_len"] for r in log if "completion_len" in r),
        "generate_s": statistics.median(r["time_generate_s"] for r in log[2:] if "time_generate_s" in r),
    }


def bench_trl(ckpt: Path, steps: int, dtype: str, threads: int, work: Path, g: int = 4, new: int = 32) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32)
    stamps, lengths = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    def reward(completions, **kw):
        return [float(len(c if isinstance(c, str) else c[0]["content"]) % 3) for c in completions]

    args = GRPOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=g,
        num_generations=g,
        max_completion_length=new,
        beta=0.0,
        max_steps=steps,
        logging_steps=1,
        learning_rate=1e-5,
        bf16=dtype == "bf16",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": PROMPT}]}] * (steps * g))
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok, callbacks=[Clock()]
    )
    trainer.train()
    times = [b - a for a, b in zip(stamps, stamps[1:])][2:]
    return {
        "s_per_step": statistics.median(times),
        "steps_timed": len(times),
        "completion_len": statistics.mean(lengths) if lengths else float("nan"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--framework", choices=["srlm", "trl", "both"], default="both")
    p.add_argument("--shape", choices=list(SHAPES), default="tiny")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from srlm.machine import cpu_info

    _, g, new = SHAPES[args.shape]
    print(
        f"{cpu_info()}, torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{args.threads} threads, dtype {args.dtype}, {args.steps} steps, "
        f"shape {args.shape}: 1 prompt x {g} x {new} tokens"
    )
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        ckpt = make_checkpoint(work, args.shape)
        res = {}
        if args.framework in ("srlm", "both"):
            res["srlm"] = bench_srlm(ckpt, args.steps, args.dtype, args.threads, work, g, new)
            print(f"srlm: {res['srlm']['s_per_step']:.3f} s/step ({json.dumps(res['srlm'])})")
        if args.framework in ("trl", "both"):
            try:
                import trl  # noqa: F401
            except ImportError:
                print("trl: not installed (pip install trl) -- srlm's figure only")
            else:
                res["trl"] = bench_trl(ckpt, args.steps, args.dtype, args.threads, work, g, new)
                print(f"trl:  {res['trl']['s_per_step']:.3f} s/step ({json.dumps(res['trl'])})")
        if "srlm" in res and "trl" in res:
            print(f"srlm is {res['trl']['s_per_step'] / res['srlm']['s_per_step']:.2f}x TRL's throughput")


if __name__ == "__main__":
    main()
