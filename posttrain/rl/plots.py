"""Curves of RLVR runs from their metrics.jsonl: training reward, held-out accuracy, KL to the
reference, response length (one 2x2 PNG); or, for groups of runs that differ only in the seed,
the mean over seeds with a band (min to max) and a table of mean ± std.

    python -m posttrain.rl.plots --run GRPO=runs/a --run PPO=runs/b --eval rlvr_nocomma_eval \
        --out docs/img/rlvr_cpu_curves.png
    python -m posttrain.rl.plots --group GRPO=runs/ev/grpo --group RLOO=runs/ev/rloo \
        --out docs/img/algorithms.png          # each group folder holds one run folder per seed
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

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


def seed_runs(group_dir: Path) -> list[Path]:
    """The finished runs of a group: its sub-folders with a summary.json (one per seed)."""
    runs = sorted(p for p in Path(group_dir).iterdir() if (p / "summary.json").is_file())
    if not runs:
        raise FileNotFoundError(f"{group_dir}: no finished run (a sub-folder with summary.json)")
    return runs


def eval_name_of(rows: list[dict]) -> str:
    """The held-out eval set logged by a run (the first `eval/<name>/accuracy` key)."""
    for r in rows:
        for k in r:
            if k.startswith("eval/") and k.endswith("/accuracy") and k.count("/") == 2:
                return k.split("/")[1]
    raise ValueError("no held-out eval in metrics.jsonl (eval/<name>/accuracy)")


def band(runs: list[list[dict]], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps logged by every run, with the mean, min and max over runs at each."""
    per_run = [dict(zip(*series(rows, key))) for rows in runs]
    steps = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
    vals = [[d[s] for d in per_run] for s in steps]
    return steps, [statistics.mean(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]


def mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def group_table(groups: dict[str, Path]) -> str:
    """Markdown: per group, held-out accuracy at the start and the end, last training reward, the
    samples generated (DAPO's refills included) and wall time, mean ± std over its seeds."""
    lines = ["| run | seeds | held-out before | held-out after | response len after (greedy) | "
             "train reward (last) | samples generated | wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, gdir in groups.items():
        before, after, length, reward, generated, wall = [], [], [], [], [], []
        for run in seed_runs(gdir):
            rows = read_metrics(run)
            name = eval_name_of(rows)
            _, acc = series(rows, f"eval/{name}/accuracy")
            _, lens = series(rows, f"eval/{name}/response_len")
            steps = [r for r in rows if "reward/mean" in r]
            before.append(acc[0]); after.append(acc[-1]); length.append(lens[-1] if lens else float("nan"))
            reward.append(steps[-1]["reward/mean"])
            # a step generates prompts_per_step × samples_per_prompt samples, and as many again per DAPO refill
            rollout = yaml.safe_load((run / "config.yaml").read_text())["rollout"]
            per_batch = rollout["prompts_per_step"] * rollout["samples_per_prompt"]
            generated.append(sum((1 + r.get("dynamic/refills", 0)) * per_batch for r in steps))
            wall.append(json.loads((run / "summary.json").read_text())["wall_s"])
        lines.append(f"| {label} | {len(before)} | {mean_sd(before)} | {mean_sd(after)} | {mean_sd(length)} | "
                     f"{mean_sd(reward)} | {statistics.mean(generated):.0f} | {statistics.mean(wall):.0f} |")
    return "\n".join(lines)


def plot_groups(groups: dict[str, Path], out: Path, title: str = "") -> Path:
    """1x3 PNG: held-out accuracy, sampled response length, held-out (greedy) response length; each
    group's mean over seeds as a line, its min..max over seeds as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = {label: [read_metrics(r) for r in seed_runs(d)] for label, d in groups.items()}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, (label, runs) in enumerate(loaded.items()):
        name = eval_name_of(runs[0])
        panels = [(f"eval/{name}/accuracy", f"held-out accuracy ({name}, greedy)"),
                  ("response_len/mean", "response length, sampled (tokens)"),
                  (f"eval/{name}/response_len", "response length, held-out greedy (tokens)")]
        for ax, (key, panel_title) in zip(axes, panels):
            x, mean, lo, hi = band(runs, key)
            if not x:
                continue
            ax.plot(x, mean, color=f"C{i}", lw=2, marker="o" if key.startswith("eval/") else None, ms=4,
                    label=f"{label} (n={len(runs)})")
            ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.18, lw=0)
            ax.set_title(panel_title, fontsize=10)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(f"{title} (line: mean over seeds; band: min to max)", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _labelled(ap: argparse.ArgumentParser, specs: list[str] | None, flag: str) -> dict[str, Path]:
    out = {}
    for spec in specs or []:
        label, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"{flag} {spec!r}: expected LABEL=DIR")
        out[label] = Path(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m posttrain.rl.plots", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", help="LABEL=RUN_DIR (repeatable)")
    ap.add_argument("--group", action="append", help="LABEL=DIR of one run per seed (repeatable)")
    ap.add_argument("--eval", help="--run: name of the held-out eval set (file stem)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="")
    ap.add_argument("--smooth", type=int, default=5)
    args = ap.parse_args(argv)
    runs, groups = _labelled(ap, args.run, "--run"), _labelled(ap, args.group, "--group")
    if bool(runs) == bool(groups):
        ap.error("give --run (single runs) or --group (seed groups), not both")
    if groups:
        print(group_table(groups))
        print(plot_groups(groups, Path(args.out), args.title))
        return 0
    if not args.eval:
        ap.error("--run needs --eval")
    print(plot_runs(runs, args.eval, Path(args.out), args.smooth))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
