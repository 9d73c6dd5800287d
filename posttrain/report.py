"""Run report: `report.md` and `report.html` in a pipeline's run directory.

Reads only what the stages wrote (config.yaml, summary.json, metrics.jsonl, eval summaries, the
decontamination report), so it can be rebuilt at any time with `posttrain report RUN_DIR`
(`posttrain.recipes.report`, which knows the run directory's layout).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

# Curves worth plotting: (title, keys the stages log it under); the first key a stage logged is
# plotted. Held-out accuracies (`eval/<set>/accuracy`, logged by RLVR) get a panel per set.
CURVES = [
    ("loss", ("loss",)), ("learning rate", ("lr",)), ("grad norm", ("grad_norm",)),
    ("DPO reward margin", ("margin",)), ("preference accuracy", ("accuracy",)),
    ("RL reward (mean)", ("reward/mean", "reward_mean")), ("KL to reference (k3)", ("kl/k3", "kl")),
    ("response length (tokens)", ("response_len/mean", "response_length")),
    ("policy loss", ("loss/policy",)), ("value loss", ("loss/value", "value_loss")), ("entropy", ("entropy",)),
]


def _curves(metrics: list[dict]) -> list[tuple[str, str]]:
    """(metric key, title) of every curve the stage logged, in CURVES order, then held-out sets."""
    def logged(k):
        return any(isinstance(r.get(k), (int, float)) for r in metrics)

    out = []
    for title, keys in CURVES:
        key = next((k for k in keys if logged(k)), None)
        if key is not None:
            out.append((key, title))
    held_out = sorted({k for r in metrics for k in r if k.startswith("eval/") and k.endswith("/accuracy")})
    out += [(k, "held-out accuracy" + (f": {k.split('/')[1]}" if k.count("/") == 2 else ""))
            for k in held_out if logged(k)]
    return out


@dataclass
class StageInfo:
    name: str
    dir: Path
    seconds: float | None = None
    status: str = "done"
    config_text: str = ""
    plots: list[str] = field(default_factory=list)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def plot_stage(stage: str, metrics: list[dict], out_dir: Path) -> list[str]:
    """One PNG per stage with a panel per logged curve; returns relative paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    keys = _curves(metrics)
    if not keys:
        return []
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (k, title) in zip(axes.flat, keys):
        pts = [(r["step"], r[k]) for r in metrics if isinstance(r.get(k), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None,
                markersize=3, color="#2563eb")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"{stage}: training curves", fontsize=12)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stage}_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


def eval_table(evals: dict[str, dict[str, float]], stats: dict | None = None) -> tuple[list[str], list[list[str]]]:
    """evals: model label (in pipeline order) -> {metric: value}. Rates are shown in percent with deltas
    vs the previous column; `*/num_samples` rows are the sample counts. With `stats` (from
    `evaluation.compare.stage_stats`) each cell also shows its 95% interval, and each delta comes
    from the paired bootstrap, marked `*` when its interval excludes zero."""
    labels = list(evals)
    metrics = sorted({m for v in evals.values() for m in v})
    header = ["metric"] + [lab if i == 0 else f"{lab} (Δ)" for i, lab in enumerate(labels)]
    intervals, deltas = (stats or {}).get("intervals", {}), (stats or {}).get("deltas", {})
    rows = []
    for m in metrics:
        row, prev = [m], None
        for lab in labels:
            v = evals[lab].get(m)
            if v is None:
                row.append("–")
                continue
            if m.endswith("num_samples"):  # a count, not a rate: no percent, no delta
                row.append(f"{v:.0f}")
                continue
            cell = f"{100 * v:.1f}"
            if (iv := intervals.get(lab, {}).get(m)) is not None:
                cell += f" [{100 * iv[0]:.1f}, {100 * iv[1]:.1f}]"
            if (d := deltas.get(lab, {}).get(m)) is not None:
                cell += f" ({100 * d['delta']:+.1f}{'*' if d['significant'] else ''})"
            elif prev is not None:
                cell += f" ({100 * (v - prev):+.1f})"
            row.append(cell)
            prev = v
        rows.append(row)
    return header, rows


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2937;line-height:1.45}
h1{font-size:1.7em;border-bottom:2px solid #2563eb;padding-bottom:.3em}
h2{font-size:1.3em;margin-top:1.6em;color:#1e3a8a}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #d1d5db;padding:.35em .7em;text-align:right}
th{background:#eff6ff}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #e5e7eb;border-radius:4px;margin:.4em 0}
details{margin:.4em 0 1em}summary{cursor:pointer;color:#2563eb}
pre{background:#f9fafb;border:1px solid #e5e7eb;padding:.7em;overflow-x:auto;font-size:.82em}
.muted{color:#6b7280;font-size:.9em}
"""


STATS_NOTE = ("Brackets: 95% interval (Wilson for accuracies over samples, else bootstrap). Δ: paired "
              "bootstrap over the samples both stages answered; * marks a change whose 95% interval excludes 0.")


def write_report(run_dir: Path, title: str, stages: list[StageInfo], evals: dict[str, dict[str, float]],
                 decontam_md: str | None, notes: list[str] | None = None, stats: dict | None = None
                 ) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    plots_dir = run_dir / "plots"
    for st in stages:
        st.plots = [str(Path(p).relative_to(run_dir)) for p in
                    plot_stage(st.name, _read_jsonl(st.dir / "metrics.jsonl"), plots_dir)]
    stage_rows = [[s.name, s.status, f"{s.seconds:.0f}" if s.seconds is not None else "–",
                   str(s.dir.relative_to(run_dir)) if s.dir.is_relative_to(run_dir) else str(s.dir)]
                  for s in stages]
    stage_header = ["stage", "status", "time (s)", "directory"]
    eh, er = eval_table(evals, stats) if evals else ([], [])

    md = [f"# {title}", ""]
    md += [f"- {n}" for n in notes or []]
    md += ["", "## Stages", "", md_table(stage_header, stage_rows), ""]
    if evals:
        md += ["## Evaluation across stages (%, Δ vs the previous column)", "", md_table(eh, er), "",
               STATS_NOTE if stats else "", ""]
    if decontam_md:
        md += ["## Decontamination", "", decontam_md.strip(), ""]
    md += ["## Training curves", ""]
    for st in stages:
        md += [f"![{st.name}]({p})" for p in st.plots]
    md += ["", "## Resolved configs", ""]
    for st in stages:
        if st.config_text:
            md += [f"### {st.name}", "", "```yaml", st.config_text.strip(), "```", ""]
    md_path = run_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n")

    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
         f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if notes:
        h.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    h += ["<h2>Stages</h2>", html_table(stage_header, stage_rows)]
    if evals:
        h += ["<h2>Evaluation across stages</h2>",
              "<p class='muted'>Scores in %; in parentheses the change from the previous column.</p>",
              html_table(eh, er)] + ([f"<p class='muted'>{html.escape(STATS_NOTE)}</p>"] if stats else [])
    if decontam_md:
        h += ["<h2>Decontamination</h2>", _md_tables_to_html(decontam_md)]
    h.append("<h2>Training curves</h2>")
    for st in stages:
        h += [f"<img src='{html.escape(p)}' alt='{html.escape(st.name)} curves'>" for p in st.plots]
    h.append("<h2>Resolved configs</h2>")
    for st in stages:
        if st.config_text:
            h.append(f"<details><summary>{html.escape(st.name)}</summary><pre>{html.escape(st.config_text)}</pre></details>")
    h.append("</body></html>")
    html_path = run_dir / "report.html"
    html_path.write_text("\n".join(h))
    return md_path, html_path


def _md_tables_to_html(text: str) -> str:
    """Render the pipe tables (and plain lines) of a small markdown snippet."""
    out, table = [], []

    def flush():
        if table:
            rows = [[c.strip() for c in r.strip().strip("|").split("|")] for r in table]
            rows = [r for r in rows if not all(set(c) <= set("-: ") for c in r)]
            out.append(html_table(rows[0], rows[1:]))
            table.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        s = line.strip()
        if s.startswith("#"):
            out.append(f"<h3>{html.escape(s.lstrip('#').strip())}</h3>")
        elif s:
            out.append(f"<p>{html.escape(s)}</p>")
    flush()
    return "\n".join(out)
