"""Serving benchmark: aggregate throughput of N concurrent clients against the same N requests one at a time.

Starts `srlm serve` in its own process on a free 127.0.0.1 port, then alternates the two ways of sending
the same N chat requests (each exactly --max-tokens new tokens: ignore_eos, seeded sampling), and prints
tokens/s for both and their ratio (continuous batching is what makes the concurrent way faster). Without a
checkpoint it builds a random-weight model of --preset with a BPE tokenizer trained on the spot.

    python benchmarks/bench_serve.py runs/default/final --clients 8 --max-tokens 64 --rounds 3
    python benchmarks/bench_serve.py --preset small --clients 8 --max-tokens 64
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

QUESTIONS = [
    "Tom has 12 apples and eats 3. How many are left?",
    "Ann has 5 pens. She buys 7 more. How many pens does she have?",
    "A box holds 6 eggs. How many eggs are in 4 boxes?",
    "Sam reads 15 pages a day. How many pages does he read in 3 days?",
    "There are 40 birds on a tree and 13 fly away. How many stay?",
    "Lee has 9 coins and finds 16 more. How many coins now?",
    "A shelf has 8 rows of 7 books. How many books are there?",
    "Mia had 50 stickers and gave 18 away. How many are left?",
]


def build_random_checkpoint(folder: Path, preset: str) -> Path:
    import torch

    from srlm.data.synthetic import corpus_lines
    from srlm.model import CausalLM, save
    from srlm.model import preset as make_preset
    from srlm.tokenizer import train_bpe

    tok = train_bpe(list(corpus_lines(2000)), 1024)
    torch.manual_seed(0)
    save(CausalLM(make_preset(preset, vocab_size=tok.vocab_size)).eval(), folder, tokenizer=tok)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(http: httpx.Client, i: int, max_tokens: int) -> tuple[float, int]:
    body = {
        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": i,
        "ignore_eos": True,
    }
    t0 = time.perf_counter()
    r = http.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return time.perf_counter() - t0, r.json()["usage"]["completion_tokens"]


def one_at_a_time(http: httpx.Client, n: int, max_tokens: int) -> tuple[float, int, list[float]]:
    t0 = time.perf_counter()
    results = [request(http, i, max_tokens) for i in range(n)]
    return time.perf_counter() - t0, sum(t for _, t in results), [lat for lat, _ in results]


def concurrent(http: httpx.Client, n: int, max_tokens: int) -> tuple[float, int, list[float]]:
    results: list = [None] * n

    def run(i):
        results[i] = request(http, i, max_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if any(r is None for r in results):
        raise RuntimeError("a concurrent request failed (see the server's output)")
    return wall, sum(t for _, t in results), [lat for lat, _ in results]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", nargs="?", help="checkpoint folder (default: a random --preset model)")
    p.add_argument("--preset", default="small", help="model preset when no checkpoint is given (default small)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two ways (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    p.add_argument("--dtype", default=None)
    p.add_argument("--quantize", default=None)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or str(build_random_checkpoint(Path(tmp) / args.preset, args.preset))
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "srlm.cli",
            "serve",
            ckpt,
            "--port",
            str(port),
            "--max-batch",
            str(max(16, args.clients)),
        ]
        for flag in ("threads", "dtype", "quantize"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag}", str(getattr(args, flag))]
        server = subprocess.Popen(cmd)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("srlm serve did not start")
                time.sleep(0.2)
            model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
            print(
                f"model {model}; {args.clients} chat requests of {args.max_tokens} new tokens each "
                f"(temperature 0.7, ignore_eos)"
            )
            # one pooled client, as an application would hold, with a connection per concurrent request
            http = httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=args.clients))
            request(http, 0, 8)  # warm-up (and open the connections)
            concurrent(http, args.clients, 8)
            ratios = []
            for rnd in range(args.rounds):
                s_wall, s_tok, s_lat = one_at_a_time(http, args.clients, args.max_tokens)
                c_wall, c_tok, c_lat = concurrent(http, args.clients, args.max_tokens)
                s_tps, c_tps = s_tok / s_wall, c_tok / c_wall
                ratios.append(c_tps / s_tps)
                print(
                    f"round {rnd + 1}: one at a time {s_tps:7.1f} tok/s ({s_wall:.2f} s, mean latency "
                    f"{statistics.mean(s_lat):.2f} s) | {args.clients} concurrent {c_tps:7.1f} tok/s "
                    f"({c_wall:.2f} s, mean latency {statistics.mean(c_lat):.2f} s) | ratio {ratios[-1]:.2f}x"
                )
            print(
                f"aggregate throughput, {args.clients} concurrent clients / one at a time: "
                f"median {statistics.median(ratios):.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
            )
        finally:
            server.terminate()
            server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
