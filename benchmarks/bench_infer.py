"""Inference benchmark: srlm's engine against transformers' generate, in one run, alternating.

A thin wrapper over `srlm bench` (src/srlm/commands/bench.py), which documents every figure.
The figures in the README came from:

    python benchmarks/bench_infer.py --preset qwen2.5-0.5b --random-init --compare hf --quantize int8
    python benchmarks/bench_infer.py --preset base --random-init --override num_hidden_layers=4 \
        --dtype float32 --compare hf --quantize int8 --compile --rounds 2
"""

import sys

from srlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
