#!/usr/bin/env bash
# The side-by-side run behind the README's speed table: one job at a time, on a quiet machine.
#   bash benchmarks/speed_table.sh OUT_DIR
# Needs srlm with the test extras, llama-cpp-python (bash .ci/install-llama-cpp) and, for the GRPO row,
# TRL in the Python given as TRL_PYTHON (pip install trl). SmolLM2's GGUF is the one the tests download
# (tests/_real_model.py); GGUF=... points elsewhere.
set -euo pipefail
out=${1:?usage: speed_table.sh OUT_DIR}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
GGUF=${GGUF:-${XDG_CACHE_HOME:-$HOME/.cache}/srlm/test-models/SmolLM2-135M-Instruct.Q4_1.gguf}
TRL_PYTHON=${TRL_PYTHON:-python}
lscpu > "$out/lscpu.txt"
run() { local name=$1; shift; echo "# $name: $*" >&2; "$@" > "$out/$name.json" 2> "$out/$name.err"; }
run smol_bf16_int8 srlm bench "$GGUF" --dtype bfloat16 --compare hf llama.cpp --quantize int8 --rounds 3 --batch 1 8 --new-tokens 64 --prefill-len 512 --threads 2
run smol_bf16_int4 srlm bench "$GGUF" --dtype bfloat16 --compare llama.cpp --quantize int4 --rounds 3 --batch 1 --new-tokens 64 --prefill-len 512 --threads 2
run smol_fp32 srlm bench "$GGUF" --dtype float32 --compare hf llama.cpp --rounds 3 --batch 1 8 --new-tokens 64 --prefill-len 512 --threads 2
run q05_bf16_int8 srlm bench --preset qwen2.5-0.5b --random-init --compare hf llama.cpp --quantize int8 --rounds 1 --batch 1 8 --new-tokens 32 --prefill-len 512 --threads 2
run q05_rollout srlm bench --preset qwen2.5-0.5b --random-init --compare hf --rounds 1 --batch 1 --new-tokens 8 --prefill-len 64 --rollout 16 32 64 --threads 2
run cli taskset -c 0 python "$here/bench_generate_cli.py" --preset tiny --new-tokens 1000 --threads 1 --rounds 5
echo "# grpo05" >&2
"$TRL_PYTHON" "$here/bench_grpo.py" --shape qwen2.5-0.5b --framework both --dtype bf16 --threads 2 --steps 6 --warmup 2 > "$out/grpo05.txt" 2> "$out/grpo05.err"
