"""The command line against the engine: `srlm generate` as a whole process vs the engine in-process, and
transformers' `generate` as a whole process, on the same checkpoint.

Each process runs twice per round, for 1 and for `--new-tokens` tokens (greedy, `--ignore-eos`, so
exactly that many), and the difference of the two times is what the extra tokens cost: start-up
(imports, loading, the prompt's prefill) is differenced out. Variants alternate round by round; each
figure is the median over `--rounds`. The engine in-process figure is `Engine.stream` (what the command
runs) and `Engine.generate`, timed in this process after a warm-up. Without a checkpoint a random-weight
`--preset` model is built with a BPE tokenizer trained on the spot. Start-up (the 1-token process) is
printed too.

    python benchmarks/bench_generate_cli.py --preset tiny --new-tokens 1000 --threads 1 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "Tom has 12 apples and eats 3. How many are left?"

HF_SCRIPT = """
import sys, torch, transformers
torch.set_num_threads(int(sys.argv[3]))
n = int(sys.argv[2])
tok = transformers.PreTrainedTokenizerFast(tokenizer_file=sys.argv[1] + "/tokenizer.json")
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor([tok.encode(sys.argv[4])])
with torch.inference_mode():
    out = m.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
sys.stdout.write(tok.decode(out[0, ids.shape[1]:].tolist()) + "\\n")
assert out.shape[1] - ids.shape[1] == n
"""


def _wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path", nargs="?", default=None, help="checkpoint folder (default: a random --preset model)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--new-tokens", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    import torch

    from srlm.infer.load import load_engine
    from srlm.machine import cpu_info

    tmp = Path(tempfile.mkdtemp(prefix="srlm-bench-cli-"))
    try:
        if args.path is None:
            sys.path.insert(0, str(Path(__file__).parent))
            from bench_serve import build_random_checkpoint

            folder = build_random_checkpoint(tmp / args.preset, args.preset)
        else:
            folder = Path(args.path)
        srlm_bin = shutil.which("srlm") or str(Path(sys.executable).parent / "srlm")
        hf_script = tmp / "hf_generate.py"
        hf_script.write_text(HF_SCRIPT)

        def srlm_cmd(n):
            return [srlm_bin, "generate", str(folder), "--prompt", PROMPT, "--max-new-tokens", str(n)]

        def hf_cmd(n):
            return [sys.executable, str(hf_script), str(folder), str(n), str(args.threads), PROMPT]

        common = ["--temperature", "0", "--ignore-eos", "--threads", str(args.threads)]
        variants = {"srlm generate": lambda n: srlm_cmd(n) + common, "transformers generate": hf_cmd}
        n = args.new_tokens
        per_token: dict[str, list[float]] = {k: [] for k in variants}
        startup: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, cmd in variants.items():
                t1, tn = _wall(cmd(1)), _wall(cmd(n))
                startup[name].append(t1)
                per_token[name].append((tn - t1) / (n - 1))

        torch.set_num_threads(args.threads)
        engine = load_engine(folder, threads=args.threads)
        ids = engine.encode_prompt(PROMPT)
        kw = dict(max_new_tokens=n, temperature=0, stop_token_ids=[])
        engine.generate([ids], max_new_tokens=8, temperature=0)
        inproc = {
            "engine stream": lambda: "".join(engine.stream(ids, **kw)),
            "engine generate": lambda: engine.generate([ids], **kw),
        }
        for name, fn in inproc.items():
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            per_token[name] = [t / n for t in times]  # prefill included: one prompt's worth, small beside n

        rates = {k: round(1 / statistics.median(v), 1) for k, v in per_token.items()}
        result = {
            **cpu_info(),
            "torch": torch.__version__,
            "threads": args.threads,
            "model": args.path or args.preset,
            "new_tokens": n,
            "rounds": args.rounds,
            "tokens_per_s": rates,
            "startup_s": {k: round(statistics.median(v), 2) for k, v in startup.items()},
            "ratios": {
                "srlm generate / transformers generate": round(
                    rates["srlm generate"] / rates["transformers generate"], 2
                ),
                "srlm generate / engine stream": round(rates["srlm generate"] / rates["engine stream"], 2),
                "engine generate / transformers generate": round(
                    rates["engine generate"] / rates["transformers generate"], 2
                ),
            },
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
