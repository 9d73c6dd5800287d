"""Per-token log-probs: memory and time of `token_logprobs` against a plain log_softmax, side by side.

    python benchmarks/bench_logprobs.py --device cuda --batch 4 --seq 2048 --vocab 49152
    python benchmarks/bench_logprobs.py --device cpu --batch 1 --seq 256 --vocab 49152

Reports, per method, forward+backward time, bytes autograd saves for backward (any device) and
the CUDA peak above the logits themselves; checks values and gradients agree.
"""

from __future__ import annotations

import argparse
import time

import torch

from posttrain.losses.logprobs import token_logprobs


def naive(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, labels[:, 1:, None]).squeeze(-1)




def run(fn, logits0, labels, weights, device, repeats):
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    best, out, grad, peak = float("inf"), None, None, 0
    for i in range(repeats + 1):  # first run warms up
        out = grad = logits = None  # free the last run's tensors before measuring the baseline
        logits = logits0.detach().clone().requires_grad_()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        saved[0] = 0
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(logits, labels)
        (out * weights).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        if i:
            best = min(best, time.perf_counter() - start)
        grad = logits.grad
    return best, saved[0], peak, out.detach(), grad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunks", type=int, nargs="+", default=[1024], help="chunk sizes (rows) to compare")
    args = ap.parse_args()
    gen = torch.Generator(device=args.device).manual_seed(0)
    shape = (args.batch, args.seq, args.vocab)
    logits0 = (3 * torch.randn(shape, generator=gen, device=args.device)).bfloat16()
    labels = torch.randint(0, args.vocab, shape[:2], generator=gen, device=args.device)
    weights = torch.randn(shape[0], shape[1] - 1, generator=gen, device=args.device)
    gib = 2**30
    print(f"device={args.device} logits {list(shape)} bf16 = {logits0.numel() * 2 / gib:.2f} GiB")
    methods = {"log_softmax": naive}
    for c in args.chunks:
        methods[f"token_logprobs/{c}"] = lambda x, y, c=c: token_logprobs(x, y, shift=True, chunk_size=c)
    results = {name: run(fn, logits0, labels, weights, args.device, args.repeats) for name, fn in methods.items()}
    t0, s0, p0, o0, g0 = results["log_softmax"]
    for name, (sec, saved, peak, out, grad) in results.items():
        print(f"{name:20s} fwd+bwd {sec * 1e3:8.1f} ms ({sec / t0:4.2f}x)  saved-for-backward {saved / gib:6.2f} GiB "
              f"({saved / s0:4.2f}x)  cuda peak above logits {peak / gib:6.2f} GiB"
              + (f" ({peak / p0:4.2f}x)" if p0 else "")
              + f"  max|Δ logprob| {(o0 - out).abs().max().item():.1e}"
              f"  max|Δ grad| {(g0.float() - grad.float()).abs().max().item():.1e}")


if __name__ == "__main__":
    main()
