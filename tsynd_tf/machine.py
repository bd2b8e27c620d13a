"""The machine a process runs on: its CPU model and instruction set, which decide the float
kernels TensorFlow picks (so results are bitwise equal only within one machine type:
docs/ARCHITECTURE.md), recorded by every sweep cell and shown by every bench and page."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# cpuinfo flag -> name, most capable first: the first one present names the machine type.
INSTRUCTION_SETS = (("avx512_bf16", "AVX-512+BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def instruction_set() -> str:
    """'AVX-512+BF16', 'AVX-512', 'AVX2', or the architecture where none of them is there."""
    flags = next((set(line.split(":", 1)[1].split()) for line in _cpuinfo()
                  if line.startswith("flags")), set())
    return next((name for flag, name in INSTRUCTION_SETS if flag in flags),
                platform.machine())


def describe() -> dict:
    """{'cpu', 'instruction_set', 'cores'}: what a results line records of its machine."""
    return {"cpu": cpu_model(), "instruction_set": instruction_set(),
            "cores": len(os.sched_getaffinity(0))}


def machine_type(description: dict) -> str:
    """'AMD EPYC, AVX2': the machine type of a describe() dict, as pages name it."""
    return f"{description['cpu']}, {description['instruction_set']}"
