"""One AdamW step on CPU over ~133M fp32 parameters: foreach vs fused vs the per-tensor loop.

    OMP_NUM_THREADS=1 python benchmarks/bench_adamw.py

Why posttrain's `build_optimizer` picks the fused kernel for unsharded parameters.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import torch


def child(mode: str) -> None:
    params = [torch.nn.Parameter(torch.randn(576, 1536)) for _ in range(150)]  # 132.7M, SmolLM2-135M-sized
    for p in params:
        p.grad = torch.randn_like(p)
    kind = {"foreach": {"foreach": True}, "fused": {"fused": True}, "loop": {"foreach": False}}[mode]
    opt = torch.optim.AdamW(params, lr=1e-3, **kind)
    opt.step()  # allocates the moments
    t = time.perf_counter()
    for _ in range(3):
        opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{mode:8s} {(time.perf_counter() - t) / 3:.3f} s/step  peak RSS {peak:,.0f} MiB")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(sys.argv[1])
    else:
        for mode in ("foreach", "fused", "loop"):  # each in its own process: its own peak RSS
            subprocess.run([sys.executable, __file__, mode], check=True)
