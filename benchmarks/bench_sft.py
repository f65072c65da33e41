"""SFT step time: srlm's loop vs TRL's SFTTrainer vs a plain PyTorch loop, same model and data.

A ~4.2M-parameter Qwen2-shaped model (hidden 256, 4 layers, vocab 4096), batches of 8 x 256
tokens from the synthetic GSM suite, bf16 autocast, AdamW, on CPU. The three runners alternate
for `--rounds` rounds; each round times `--steps` steps after `--warmup` untimed ones, and the
median per runner is reported. TRL is not an srlm dependency: `pip install trl` to include it.

    python benchmarks/bench_sft.py [--rounds 3 --steps 20 --warmup 3 --threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from srlm.data.synthetic import corpus_lines
from srlm.model import CausalLM, preset, save
from srlm.tokenizer import train_bpe

SHAPE = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
)
B, T = 8, 256


def make_data(tmp: Path, n_rows: int):
    lines = list(corpus_lines(400))
    tok = train_bpe(lines, SHAPE["vocab_size"])
    stream = []
    for ids in tok.encode_batch(lines * 4):
        stream += ids + [tok.eos_token_id]
    rows = torch.tensor(stream[: n_rows * T]).view(n_rows, T)
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", **SHAPE, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    save(model, tmp / "model", tokenizer=tok)
    return rows, tmp / "model", model.num_parameters


class RowsStage:
    name = "bench"

    def __init__(self, rows):
        self.rows = rows

    def batches(self, start, micro):
        i = start * micro
        while True:
            idx = torch.arange(i, i + micro) % len(self.rows)
            ids = self.rows[idx]
            yield {"input_ids": ids, "labels": ids, "num_tokens": ids.numel() - micro}
            i += micro

    def loss(self, model, batch):
        return model.loss(batch["input_ids"], batch["labels"], reduction="sum"), {}


def run_srlm(model_dir, rows, steps, warmup, out, dtype):
    from srlm.model import load_model
    from srlm.train.config import TrainConfig
    from srlm.train.loop import train

    cfg = TrainConfig(
        out_dir=str(out),
        model=str(model_dir),
        steps=warmup + steps,
        batch_size=B,
        lr=1e-4,
        warmup_steps=0,
        dtype=dtype,
        device="cpu",
        log_every=warmup + steps,
        progress=False,
        max_grad_norm=1.0,
    )
    times = []

    class Timed(RowsStage):
        def before_step(self, step, model):
            times.append(time.perf_counter())

    train(cfg, load_model(model_dir), None, Timed(rows))
    # step k's time = start of k+1 - start of k; the last step ends inside train's final save, so skip it
    gaps = [b - a for a, b in zip(times, times[1:])][warmup:]
    return statistics.mean(gaps)


def run_plain(model_dir, rows, steps, warmup, dtype):
    from srlm.model import load_model

    model = load_model(model_dir).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    t0 = None
    for s in range(warmup + steps):
        if s == warmup:
            t0 = time.perf_counter()
        ids = rows[(torch.arange(B) + s * B) % len(rows)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model.loss(ids, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / steps


def run_trl(model_dir, rows, steps, warmup, out, dtype):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ds = Dataset.from_dict({"input_ids": rows.tolist()})
    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            times.append(time.perf_counter())

    args = SFTConfig(
        output_dir=str(out),
        max_steps=warmup + steps,
        per_device_train_batch_size=B,
        learning_rate=1e-4,
        bf16=dtype == "bf16",
        use_cpu=True,
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        max_length=T,
        packing=False,
        dataloader_num_workers=0,
        lr_scheduler_type="constant",
        seed=0,
        dataset_num_proc=None,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    trainer.train()
    gaps = [b - a for a, b in zip(times, times[1:])][warmup:]
    return statistics.mean(gaps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument(
        "--dtype",
        default="bf16",
        choices=["bf16", "fp32"],
        help="autocast dtype for all runners (bf16 needs AVX-512-BF16/AMX on CPU to be fast)",
    )
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        import trl  # noqa: F401

        have_trl = not a.no_trl
    except ImportError:
        have_trl = False
        print("trl not installed: comparing srlm with the plain loop only (pip install trl)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows, model_dir, n_params = make_data(tmp, 64)
        print(
            f"model: {n_params / 1e6:.2f}M parameters, batch {B} x {T} tokens, {a.dtype} autocast, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}"
        )
        res = {"srlm": [], "plain": [], **({"trl": []} if have_trl else {})}
        for r in range(a.rounds):
            for name in res:
                out = tmp / f"{name}-{r}"
                if name == "srlm":
                    t = run_srlm(model_dir, rows, a.steps, a.warmup, out, a.dtype)
                elif name == "plain":
                    t = run_plain(model_dir, rows, a.steps, a.warmup, a.dtype)
                else:
                    t = run_trl(model_dir, rows, a.steps, a.warmup, out, a.dtype)
                res[name].append(t)
                print(f"round {r + 1}: {name:6s} {t:.3f} s/step")
        med = {k: statistics.median(v) for k, v in res.items()}
        print("median s/step: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
        if "trl" in med:
            print(f"srlm step rate / TRL step rate = {med['trl'] / med['srlm']:.2f}x")
        print(f"srlm step rate / plain loop = {med['plain'] / med['srlm']:.2f}x")


if __name__ == "__main__":
    main()
