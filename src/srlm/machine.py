"""What machine a figure was measured on: the CPU's name and the flags that decide which kernels run.
Every speed figure srlm prints (bench, run reports, benchmarks) names these."""

from __future__ import annotations

from pathlib import Path


def cpu_info() -> dict:
    """The CPU's model name and the vector / matrix flags that decide which kernels run."""
    name, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name is None:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux
        import platform

        name = platform.processor() or platform.machine()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    return {"cpu": name, "flags": [f for f in wanted if f in flags]}


def describe() -> str:
    """One line: CPU name, flags, cores, torch version and threads."""
    import os

    import torch

    info = cpu_info()
    return (
        f"{info['cpu']} ({', '.join(info['flags']) or 'no avx2'}), {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
