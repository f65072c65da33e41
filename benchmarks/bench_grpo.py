"""GRPO step time: srlm's GRPO stage vs TRL's GRPOTrainer on the same model and workload.

Workloads, both frameworks loading the same HF folder (random init, seed 0) with a BPE tokenizer
trained here:
- `--shape tiny` (FACTS.md): a random 4-layer 256-wide Qwen2 model, 1 prompt x 4 completions x
  32 new tokens per step;
- `--shape qwen2.5-0.5b`: the Qwen2.5-0.5B body (24 layers x 896, GQA 14/2, tied head) with the
  tokenizer's 1024-id vocabulary (the real 151,936-id head is left out: no tokenizer for it is
  available offline), 1 prompt x 8 completions x 128 new tokens per step.

What is held equal (so the two do the same work):
- the prompt: one user message through the folder's chat template; the token ids each framework
  actually samples from are compared, and the run stops if they differ;
- the completions: exactly `new` tokens each, in both. srlm's rollouts are sampled with no stop ids
  (the bench wraps `srlm.train.grpo.sample` with `stop_token_ids=[]`); TRL's generate gets
  `min_new_tokens = max_completion_length = new`, which masks the end-of-sequence ids until the
  last token. The mean completion length is printed for both and must equal `new`;
- the GRPO settings: beta 0 (no reference model), loss `dapo`, advantages scaled by the group's
  std, clip epsilon 0.2, temperature 1 with no top-k/top-p/min-p, one optimisation pass per rollout
  batch (num_iterations 1, one micro-batch: no old log-probs are computed), the same reward (text
  length mod 3, so advantages are non-zero and the update is real);
- the optimizer: fused torch AdamW, lr 1e-5 constant, betas (0.9, 0.95), eps 1e-8, weight decay 0,
  gradient norm clipped to 1.0 (TRL's defaults differ: beta2 0.999 and a linear schedule; they are
  set to srlm's here);
- no activation checkpointing in either (TRL's GRPOConfig turns it on by default; it is turned off
  here, as srlm's default is);
- the precision, `--dtype`: fp32 runs everything in fp32. bf16 is each framework's own bf16 mode:
  fp32 weights and optimizer state with bf16 autocast (srlm `dtype: bf16`; TRL `bf16=True`, i.e.
  accelerate's autocast). Both sample their rollouts in bf16 too: srlm's engine casts its fused
  weights (`generate_dtype`), and accelerate wraps the model's forward, so TRL's generate runs under
  bf16 autocast (`generate_autocast`);
- threads (`--threads`, torch.set_num_threads) and seeds (0).

What is the framework's own doing and so part of what is compared: srlm runs a group's prompt once
for its G completions (shared prefill in sampling and in the update) and skips completions whose
advantage is exactly 0 (they add 0 to the loss and gradient at beta 0); TRL runs G copies.

Reported: median seconds per optimizer step after `--warmup` steps (generation + reward + update,
step end to step end: srlm's `step_time_s`, TRL's time between `on_step_end` callbacks with the first
step timed from `on_train_begin`), the median generation time within a step, and the ratio.

    python benchmarks/bench_grpo.py --steps 20 --dtype bf16 --framework both --threads 2
    taskset -c 1 python benchmarks/bench_grpo.py --shape qwen2.5-0.5b --framework both --dtype bf16 \
        --threads 1 --steps 8 --warmup 2

TRL is optional (`pip install trl`); without it only srlm's figure is printed.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "Ann has 12 apples. Bob has 5 more apples than Ann. How many apples does Bob have?"

#: shared by both frameworks (srlm's names; TRL's equivalents are set in `bench_trl`)
LR, BETAS, EPS, MAX_GRAD_NORM, CLIP_EPS, SEED = 1e-5, (0.9, 0.95), 1e-8, 1.0, 0.2, 0

#: shape -> (preset and overrides, completions per step, new tokens per completion)
SHAPES = {"tiny": (("base", {"num_hidden_layers": 4}), 4, 32), "qwen2.5-0.5b": (("qwen2.5-0.5b", {}), 8, 128)}


def make_checkpoint(folder: Path, shape: str = "tiny") -> Path:
    from srlm.data.synthetic import corpus_lines
    from srlm.model import CausalLM, preset, save
    from srlm.tokenizer import train_bpe

    tok = train_bpe(list(corpus_lines(400)), 1024)
    torch.manual_seed(SEED)
    (name, over), _, _ = SHAPES[shape]
    cfg = preset(name, **over, vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return save(CausalLM(cfg), folder / "model", tokenizer=tok)


def reward_len_mod3(text: str) -> float:
    """The reward both frameworks use: varied across a group, so the advantages and the update are real."""
    return float(len(text) % 3)


def bench_srlm(
    ckpt: Path, steps: int, dtype: str, threads: int, work: Path, g: int = 4, new: int = 32, warmup: int = 2
) -> dict:
    import srlm.train.grpo as grpo
    from srlm.data.tasks import Example
    from srlm.train.config import load_config
    from srlm.train.rollout import sample

    grpo.REWARDS["bench_len"] = lambda text, ex, task: reward_len_mod3(text)
    # every completion exactly `new` tokens: no stop ids while sampling (TRL: min_new_tokens)
    grpo.sample = functools.partial(sample, stop_token_ids=[])
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
            "grad_accum": 1,
            "num_generations": g,
            "sampling": {"temperature": 1.0, "max_new_tokens": new},
            "beta": 0.0,
            "loss_type": "dapo",
            "scale_rewards": "group",
            "epsilon": CLIP_EPS,
            "num_iterations": 1,
            "dtype": dtype,
            "num_threads": threads,
            "progress": False,
            "log_every": 1,
            "lr": LR,
            "schedule": "constant",
            "warmup_steps": 0,
            "betas": list(BETAS),
            "eps": EPS,
            "weight_decay": 0.0,
            "max_grad_norm": MAX_GRAD_NORM,
            "gradient_checkpointing": False,
            "seed": SEED,
            "rewards": {"bench_len": 1.0},
            "device": "cpu",
            "task": "synth-gsm",
        },
    )
    model, tok = grpo.prepare(cfg)
    stage = grpo.GRPOStage(cfg, tok, model=model, examples=[Example(id="p", prompt=PROMPT, answer="17")])
    from srlm.infer.decode import FusedDecoder
    from srlm.train.loop import uses_bf16

    engine_dtype = FusedDecoder.compute_dtype(model, torch.bfloat16 if uses_bf16(cfg, torch.device("cpu")) else None)
    grpo.train(cfg, model, tok, stage, stage_name="grpo")
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in log if "step_time_s" in r][warmup:]  # one record per step (log_every 1)
    return {
        "s_per_step": statistics.median(r["step_time_s"] for r in timed),
        "steps_timed": len(timed),
        "generate_s": statistics.median(r["time_generate_s"] for r in timed),
        "completion_len": statistics.mean(r["completion_len"] for r in log if "completion_len" in r),
        # srlm's rollouts run on the engine's own fused weights, not through the model's forward
        "generate_dtype": str(engine_dtype).replace("torch.", ""),
        "prompt_ids": stage.prompt_ids[0],
    }


def _autocast_probe(model) -> dict:
    """Records whether bf16 autocast is on while the model's first decoder layer runs in no-grad mode
    (sampling); `generate` is True / False once seen."""
    seen = {"generate": None}

    def hook(module, args):
        if not torch.is_grad_enabled() and seen["generate"] is None:
            seen["generate"] = torch.is_autocast_enabled("cpu")

    model.model.layers[0].register_forward_pre_hook(hook)
    return seen


def bench_trl(
    ckpt: Path, steps: int, dtype: str, threads: int, work: Path, g: int = 4, new: int = 32, warmup: int = 2
) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32)
    stamps, lengths, gen_times, prompts = [], [], [], []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    generate = model.generate

    def timed_generate(*a, **kw):
        ids = kw.get("input_ids")
        if ids is not None and not prompts:
            m = kw.get("attention_mask")
            prompts.append(ids[0][m[0].bool()].tolist() if m is not None else ids[0].tolist())
        t0 = time.perf_counter()
        out = generate(*a, **kw)
        gen_times.append(time.perf_counter() - t0)
        return out

    model.generate = timed_generate
    autocast_seen = _autocast_probe(model)

    def reward(completions, **kw):
        return [reward_len_mod3(c if isinstance(c, str) else c[0]["content"]) for c in completions]

    args = GRPOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=g,
        gradient_accumulation_steps=1,
        num_generations=g,
        max_completion_length=new,
        generation_kwargs={"min_new_tokens": new},  # exactly `new` tokens, as srlm samples them
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        loss_type="dapo",
        scale_rewards="group",
        epsilon=CLIP_EPS,
        num_iterations=1,
        max_steps=steps,
        logging_steps=1,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch_fused",
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        adam_epsilon=EPS,
        weight_decay=0.0,
        max_grad_norm=MAX_GRAD_NORM,
        gradient_checkpointing=False,  # TRL's default is True; srlm's is off
        bf16=dtype == "bf16",
        seed=SEED,
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
    checkpointing = getattr(type(model), "is_activation_checkpointing", None)  # transformers >= 5.24's name
    checkpointing = model.is_activation_checkpointing if checkpointing else model.is_gradient_checkpointing
    times = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]  # times[i]: step i + 1
    return {
        "s_per_step": statistics.median(times),
        "steps_timed": len(times),
        "generate_s": statistics.median(gen_times[warmup:]),
        "completion_len": statistics.mean(lengths) if lengths else float("nan"),
        "generate_autocast": autocast_seen["generate"],
        "activation_checkpointing": bool(checkpointing),
        "prompt_ids": prompts[0] if prompts else None,
    }


def _show(name: str, r: dict) -> None:
    shown = {k: v for k, v in r.items() if k != "prompt_ids"}
    shown["prompt_tokens"] = len(r["prompt_ids"]) if r["prompt_ids"] is not None else None
    print(f"{name}: {r['s_per_step']:.3f} s/step ({json.dumps(shown)})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the timing (default 2)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--framework", choices=["srlm", "trl", "both"], default="both")
    p.add_argument("--shape", choices=list(SHAPES), default="tiny")
    args = p.parse_args()
    if not 0 <= args.warmup < args.steps:
        p.error(f"--warmup {args.warmup} must be >= 0 and below --steps {args.steps} (some step must be timed)")
    torch.set_num_threads(args.threads)
    from srlm.machine import cpu_info

    _, g, new = SHAPES[args.shape]
    print(
        f"{cpu_info()}, torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{args.threads} threads, dtype {args.dtype}, {args.steps} steps ({args.warmup} warm-up), "
        f"shape {args.shape}: 1 prompt x {g} x {new} tokens",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        ckpt = make_checkpoint(work, args.shape)
        res = {}
        if args.framework in ("srlm", "both"):
            res["srlm"] = bench_srlm(ckpt, args.steps, args.dtype, args.threads, work, g, new, args.warmup)
            _show("srlm", res["srlm"])
            gc.collect()
        if args.framework in ("trl", "both"):
            try:
                import trl
            except ImportError:
                print("trl: not installed (pip install trl) -- srlm's figure only")
            else:
                print(f"trl {trl.__version__}", flush=True)
                res["trl"] = bench_trl(ckpt, args.steps, args.dtype, args.threads, work, g, new, args.warmup)
                _show("trl ", res["trl"])
        for name, r in res.items():
            if r["completion_len"] != new:
                print(f"warning: {name}'s mean completion length {r['completion_len']} is not {new}: unequal work")
        if "srlm" in res and "trl" in res:
            if res["srlm"]["prompt_ids"] != res["trl"]["prompt_ids"]:
                raise SystemExit(
                    f"the frameworks sampled from different prompts: srlm {res['srlm']['prompt_ids']} "
                    f"vs TRL {res['trl']['prompt_ids']}"
                )
            print(f"srlm is {res['trl']['s_per_step'] / res['srlm']['s_per_step']:.2f}x TRL's throughput")


if __name__ == "__main__":
    main()
