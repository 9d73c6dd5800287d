"""Curves of RLVR runs from their metrics.jsonl: training reward, held-out accuracy, KL to the
reference, response length (one 2x2 PNG).

    python -m posttrain.rl.plots --run GRPO=runs/a --run PPO=runs/b --eval rlvr_nocomma_eval \
        --out docs/img/rlvr_cpu_curves.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posttrain.train.metrics import read_metrics


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def moving_average(y: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(y)):
        part = y[max(0, i - window + 1):i + 1]
        out.append(sum(part) / len(part))
    return out


def plot_runs(runs: dict[str, Path], eval_name: str, out: Path, smooth: int = 5) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("reward/mean", "training reward (mean, moving avg)", True),
              (f"eval/{eval_name}/accuracy", f"held-out accuracy ({eval_name}, greedy)", False),
              ("kl/k3", "KL to reference (k3, per token)", True),
              ("response_len/mean", "response length (tokens; sampled, and held-out greedy)", True)]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, title, smoothed) in zip(axes.flat, panels):
        for i, (label, run_dir) in enumerate(runs.items()):
            x, y = series(read_metrics(run_dir), key)
            if not x:
                continue
            color = f"C{i}"
            if smoothed:
                ax.plot(x, y, color=color, alpha=0.25, lw=1)
                ax.plot(x, moving_average(y, smooth), color=color, lw=2, label=label)
            else:
                ax.plot(x, y, color=color, lw=2, marker="o", label=label)
            if key == "response_len/mean":  # held-out (greedy) lengths next to the sampled ones
                ex, ey = series(read_metrics(run_dir), f"eval/{eval_name}/response_len")
                if ex:
                    ax.plot(ex, ey, color=color, lw=1, ls="--", marker="s", ms=4, label=f"{label} held-out (greedy)")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m posttrain.rl.plots", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="LABEL=RUN_DIR (repeatable)")
    ap.add_argument("--eval", required=True, help="name of the held-out eval set (file stem)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--smooth", type=int, default=5)
    args = ap.parse_args(argv)
    runs = {}
    for spec in args.run:
        label, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"--run {spec!r}: expected LABEL=RUN_DIR")
        runs[label] = Path(path)
    print(plot_runs(runs, args.eval, Path(args.out), args.smooth))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
