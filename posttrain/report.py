"""Run report: `report.md` and `report.html` in a pipeline's run directory.

Reads only what the stages wrote (config.yaml, summary.json, metrics.jsonl, eval summaries, the
decontamination report), so it can be rebuilt at any time with `posttrain report RUN_DIR`
(`posttrain.recipes.report`, which knows the run directory's layout).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.evaluation.stats import is_count_metric

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
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False, sharex=True)
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


# Metrics that are not rates in [0, 1] (shown as they are, not in percent), and those where lower is better.
RAW_METRICS = {"nll", "mean_nll", "ppl", "margin", "margin_sum", "mean_tokens", "chosen_avg_logprob",
               "rejected_avg_logprob"}
LOWER_IS_BETTER = {"nll", "mean_nll", "ppl"}


def _leaf(metric: str) -> str:
    return metric.rsplit("/", 1)[-1]


def fmt(metric: str, value: float, signed: bool = False) -> str:
    """A metric value as the tables show it: rates in percent (1 decimal), raw metrics with 3 decimals."""
    if _leaf(metric) in RAW_METRICS:
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def metric_label(metric: str) -> str:
    return metric + (" (↓ better)" if _leaf(metric) in LOWER_IS_BETTER else "")


def eval_table(evals: dict[str, dict[str, float]], stats: dict | None = None) -> tuple[list[str], list[list[str]]]:
    """evals: model label (in pipeline order) -> {metric: value}. Rates are shown in percent, other
    metrics (NLL, margins) as they are, with deltas vs the previous column that scored the metric;
    `*/num_samples` rows are the sample counts. With `stats` (from
    `evaluation.compare.stage_stats`) each cell also shows its 95% interval, and each delta comes
    from the paired bootstrap, marked `*` when its interval excludes zero."""
    labels = list(evals)
    metrics = sorted({m for v in evals.values() for m in v})
    header = ["metric"] + [lab if i == 0 else f"{lab} (Δ)" for i, lab in enumerate(labels)]
    intervals, deltas = (stats or {}).get("intervals", {}), (stats or {}).get("deltas", {})
    rows = []
    for m in metrics:
        row, prev = [metric_label(m)], None
        for lab in labels:
            v = evals[lab].get(m)
            if v is None:
                row.append("–")
                continue
            if is_count_metric(m):  # a count, not a rate: no percent, no delta
                row.append(f"{v:.0f}")
                continue
            cell = fmt(m, v)
            if (iv := intervals.get(lab, {}).get(m)) is not None:
                cell += f" [{fmt(m, iv[0])}, {fmt(m, iv[1])}]"
            if (d := deltas.get(lab, {}).get(m)) is not None:
                cell += f" ({fmt(m, d['delta'], True)}{'*' if d['significant'] else ''})"
            elif prev is not None:
                cell += f" ({fmt(m, v - prev, True)})"
            row.append(cell)
            prev = v
        rows.append(row)
    return header, rows


def _delta_cell(metric: str, d: dict) -> str:
    return (f"{fmt(metric, d['delta'], True)} [{fmt(metric, d['low'], True)}, {fmt(metric, d['high'], True)}]"
            + ("*" if d["significant"] else ""))


def target_table(evals: dict, stats: dict, targets: dict[str, list[str]]) -> tuple[list[str], list[list[str]]]:
    """One row per (stage, target metric): the model before the stage, after it, and the paired change."""
    labels, deltas = list(evals), stats.get("deltas", {})
    rows = []
    for stage, metrics in targets.items():
        if stage not in evals:
            continue
        before = next((lab for lab in reversed(labels[:labels.index(stage)])), None)
        for m in metrics:
            if _leaf(m) in ("reward_accuracy", "reward_accuracy_sum"):
                rows.append(_reward_row(stage, m, stats.get("implicit_reward", {}).get(stage)))
                continue
            after, prev = evals[stage].get(m), evals.get(before, {}).get(m) if before else None
            d = deltas.get(stage, {}).get(m)
            if after is None:
                rows.append([stage, metric_label(m), "–", "not measured", "–", "–"])
                continue
            verdict = "–"
            if d is not None:
                better = (d["delta"] < 0) if _leaf(m) in LOWER_IS_BETTER else (d["delta"] > 0)
                verdict = ("improved" if better else "worse") + (" (significant)" if d["significant"]
                                                                 else ", not significant")
            rows.append([stage, metric_label(m), f"{before}: {fmt(m, prev)}" if prev is not None else "–",
                         fmt(m, after), _delta_cell(m, d) + f" (n={d['n']})" if d else "–", verdict])
    return ["stage", "target metric", "before", "after", "Δ [95% CI]", "verdict"], rows


def _reward_row(stage: str, m: str, r: dict | None) -> list[str]:
    """DPO's held-out reward accuracy (implicit reward vs the model before the stage): its own row,
    as it is one number about a pair of models, tested against chance (50%), not a delta."""
    if r is None:
        return [stage, m, "–", "not measured", "–", "–"]
    sfx = "_sum" if m.endswith("_sum") else ""
    acc, low, high, sig = r[f"accuracy{sfx}"], r[f"low{sfx}"], r[f"high{sfx}"], r[f"significant{sfx}"]
    return [stage, f"{m} (implicit reward vs {r['reference']})", "50.0 (chance)",
            f"{100 * acc:.1f} [{100 * low:.1f}, {100 * high:.1f}] (n={r['n']})",
            f"{100 * (acc - 0.5):+.1f} vs chance" + ("*" if sig else ""),
            "above chance (significant)" if sig else "not distinguishable from chance"]


def non_target_notes(evals: dict, stats: dict, targets: dict[str, list[str]], primary: dict[str, str]) -> list[str]:
    """Plain sentences about every task no stage targets: any significant drop, else that none was seen
    and how large a change the data can rule out (the base -> final interval)."""
    targeted = {m.split("/", 1)[0] for ms in targets.values() for m in ms}
    notes = []
    for task, metric in primary.items():
        if task in targeted:
            continue
        m = f"{task}/{metric}"
        drops = [(lab, d) for lab, ds in stats.get("deltas", {}).items() if (d := ds.get(m)) and d["significant"]
                 and ((d["delta"] > 0) if _leaf(m) in LOWER_IS_BETTER else (d["delta"] < 0))]
        overall = stats.get("overall", {})
        od = overall.get("deltas", {}).get(m)
        if drops:
            notes.append(f"**{m} dropped significantly**: " + "; ".join(
                f"at {lab} {_delta_cell(m, d)} (n={d['n']})" for lab, d in drops) + ".")
        elif od:
            notes.append(f"{m}: no significant drop at any stage; {overall['from']} → {overall['to']} "
                         f"{_delta_cell(m, od)} (n={od['n']}), so changes outside that interval are ruled out.")
        else:
            notes.append(f"{m}: no significant drop between the stages that scored it.")
    return notes


def generation_table(gen: dict) -> tuple[list[str], list[list[str]]]:
    """Per generation task and model: mean response tokens [95% CI], paired Δ vs the model before, and
    the share of responses cut at the token budget (the truncation check)."""
    rows = []
    for task, per in gen.items():
        for lab, e in per.items():
            d = e.get("delta_tokens")
            rows.append([task, lab, str(e["n"]), f"{e['mean_tokens']:.1f} [{e['tokens_low']:.1f}, {e['tokens_high']:.1f}]",
                         (f"{d['delta']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]{'*' if d['significant'] else ''}"
                          f" vs {d['from']}") if d else "–",
                         f"{100 * e['cut_rate']:.1f} [{100 * e['cut_low']:.1f}, {100 * e['cut_high']:.1f}]",
                         ", ".join(f"{k} {v}" for k, v in e["finish"].items())])
    return ["task", "model", "n", "response tokens [95% CI]", "Δ tokens (paired)", "cut at budget, % [95% CI]",
            "finish reasons"], rows


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{_num_class(c)}>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


_NUMERIC = re.compile(r"^[-+–]?\d")


def _num_class(cell) -> str:
    return " class='num'" if _NUMERIC.match(str(cell)) else ""


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2937;line-height:1.45}
h1{font-size:1.7em;border-bottom:2px solid #2563eb;padding-bottom:.3em}
h2{font-size:1.3em;margin-top:1.6em;color:#1e3a8a}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #d1d5db;padding:.35em .7em;text-align:left}
th{background:#eff6ff}td.num{text-align:right;white-space:nowrap}
img{max-width:100%;border:1px solid #e5e7eb;border-radius:4px;margin:.4em 0}
details{margin:.4em 0 1em}summary{cursor:pointer;color:#2563eb}
pre{background:#f9fafb;border:1px solid #e5e7eb;padding:.7em;overflow-x:auto;font-size:.82em}
.muted{color:#6b7280;font-size:.9em}
table.ex{table-layout:fixed;width:100%}table.ex td{text-align:left;vertical-align:top}
table.ex pre{white-space:pre-wrap;word-break:break-word;margin:.2em 0;max-height:18em;overflow-y:auto}
.mark{font-weight:600}
"""


STATS_NOTE = ("Brackets: 95% interval (Wilson for accuracies over samples, else bootstrap). Δ: paired "
              "bootstrap over the samples both stages answered; * marks a change whose 95% interval excludes 0.")


@dataclass
class ReportInputs:
    title: str
    stages: list[StageInfo]
    evals: dict[str, dict[str, float]]
    decontam_md: str | None = None
    notes: list[str] = field(default_factory=list)
    stats: dict | None = None  # evaluation.compare.stage_stats (+ "generation": generation_stats)
    targets: dict[str, list[str]] = field(default_factory=dict)  # stage -> task/metric it should move
    examples: int = 3  # prompts per generation task, base vs final
    eval_dir: Path | None = None  # <run>/eval, for the example outputs
    prefs_stats: dict | None = None  # the prefs stage's stats.json (on-policy pairs and their judge)
    synth_stats: dict | None = None  # the synth stage's stats.json


_USER_TURN = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)
_SCORE_KEYS = ("correct", "prompt_level_loose_acc", "prompt_level_loose", "exact_match", "score")


def _user_text(prompt: str) -> str:
    turns = _USER_TURN.findall(prompt)  # ChatML (the embedded model's template); else the prompt's end
    return turns[-1].strip() if turns else prompt[-400:]


def _score_mark(scores: dict) -> str:
    key = next((k for k in _SCORE_KEYS if k in scores), None)
    if key is None:
        return ""
    v = scores[key]
    return ("✓" if v else "✗") if v in (0, 1, True, False) else f"{key} {v:.2f}"


def examples(eval_dir: Path, labels: list[str], k: int, first_tasks: tuple[str, ...] = ()) -> list[dict]:
    """The first `k` prompts of each generation task scored by the first and the last model: prompt,
    both outputs, their grade and finish reason; `first_tasks` (the stages' targets) lead."""
    from posttrain.evaluation.results import read_rows

    if k <= 0 or len(labels) < 2:
        return []
    first, last = labels[0], labels[-1]
    out = []
    paths = sorted((eval_dir / first).glob("*.jsonl"), key=lambda p: (p.stem not in first_tasks, p.stem))
    for path in paths:
        other = eval_dir / last / path.name
        if not other.is_file():
            continue
        a, b = read_rows(path), read_rows(other)
        ids = [i for i, r in a.items() if i in b and isinstance(r.get("output"), str)][:k]
        for i in ids:
            out.append({"task": path.stem, "id": i, "prompt": _user_text(a[i]["prompt"]), "labels": (first, last),
                        "outputs": [(a[i]["output"], _score_mark(a[i]["scores"]), a[i]["finish_reason"]),
                                    (b[i]["output"], _score_mark(b[i]["scores"]), b[i]["finish_reason"])]})
    return out


def _clip(text: str, n: int = 600) -> str:
    return text if len(text) <= n else text[:n] + " …"


def _examples_md(exs: list[dict]) -> list[str]:
    md = []
    for e in exs:
        md += [f"**{e['task']}** `{e['id']}`: {_clip(e['prompt'], 300)}", ""]
        for lab, (text, mark, finish) in zip(e["labels"], e["outputs"]):
            md.append(f"- {lab} {mark} ({finish}): " + _clip(text).replace("\n", " ⏎ "))
        md.append("")
    return md


def _examples_html(exs: list[dict]) -> list[str]:
    if not exs:
        return []
    h = ["<table class='ex'><thead><tr><th>task · prompt</th>"
         + "".join(f"<th>{html.escape(lab)}</th>" for lab in exs[0]["labels"]) + "</tr></thead><tbody>"]
    for e in exs:
        cells = "".join(f"<td><div class='mark'>{html.escape(mark)} <span class='muted'>{html.escape(str(finish))}"
                        f"</span></div><pre>{html.escape(_clip(text))}</pre></td>" for text, mark, finish in e["outputs"])
        h.append(f"<tr><td><b>{html.escape(e['task'])}</b><pre>{html.escape(_clip(e['prompt'], 300))}</pre></td>"
                 f"{cells}</tr>")
    return h + ["</tbody></table>"]


def _primary(eval_dir: Path | None, labels: list[str]) -> dict[str, str]:
    """task -> its primary metric, from the eval summaries."""
    out: dict[str, str] = {}
    for lab in labels:
        path = (eval_dir / lab / "summary.json") if eval_dir else None
        if path and path.is_file():
            for task, t in json.loads(path.read_text()).get("tasks", {}).items():
                out.setdefault(task, t.get("primary_metric"))
    return {k: v for k, v in out.items() if v}


def write_report(run_dir: Path, r: ReportInputs) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    plots_dir = run_dir / "plots"
    for st in r.stages:
        st.plots = [str(Path(p).relative_to(run_dir)) for p in
                    plot_stage(st.name, _read_jsonl(st.dir / "metrics.jsonl"), plots_dir)]
    stage_rows = [[s.name, s.status, f"{s.seconds:.0f}" if s.seconds is not None else "–",
                   str(s.dir.relative_to(run_dir)) if s.dir.is_relative_to(run_dir) else str(s.dir)]
                  for s in r.stages]
    stage_header = ["stage", "status", "time (s)", "directory"]
    stats, labels = r.stats or {}, list(r.evals)
    eh, er = eval_table(r.evals, r.stats) if r.evals else ([], [])
    th, tr = target_table(r.evals, stats, r.targets) if r.evals and r.targets and stats else ([], [])
    notes = non_target_notes(r.evals, stats, r.targets, _primary(r.eval_dir, labels)) if r.evals and stats else []
    gh, gr = generation_table(stats["generation"]) if stats.get("generation") else ([], [])
    lead = tuple(m.split("/", 1)[0] for ms in r.targets.values() for m in ms)
    exs = examples(r.eval_dir, labels, r.examples, lead) if r.eval_dir and r.evals else []

    sections = []  # (title, markdown lines, html parts)
    if tr:
        sections.append(("What each stage did (its target metric, paired 95% interval)", [md_table(th, tr)],
                         [html_table(th, tr)]))
    if notes:
        sections.append(("Tasks no stage targets", [f"- {n}" for n in notes],
                         ["<ul>" + "".join(f"<li>{_inline(n)}</li>" for n in notes) + "</ul>"]))
    if er:
        sections.append(("Evaluation across stages (Δ vs the previous column)", [md_table(eh, er), "", STATS_NOTE],
                         [html_table(eh, er), f"<p class='muted'>{html.escape(STATS_NOTE)}</p>"]))
    if gr:
        sections.append(("Response length and finish reasons", [md_table(gh, gr)], [html_table(gh, gr)]))
    if exs:
        sections.append((f"Outputs side by side ({exs[0]['labels'][0]} vs {exs[0]['labels'][1]})",
                         _examples_md(exs), _examples_html(exs)))
    sections.append(("Stages", [md_table(stage_header, stage_rows)], [html_table(stage_header, stage_rows)]))
    if r.synth_stats:
        lines = synth_lines(r.synth_stats)
        sections.append(("Synthetic data (persona-driven)", [f"- {x}" for x in lines],
                         ["<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"]))
    if r.prefs_stats:
        lines = prefs_lines(r.prefs_stats)
        sections.append(("On-policy preference data and its judge", [f"- {x}" for x in lines] + ["", JUDGE_NOTE],
                         ["<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>",
                          f"<p class='muted'>{html.escape(JUDGE_NOTE)}</p>"]))
    if r.decontam_md:
        sections.append(("Decontamination", [r.decontam_md.strip()], [_md_tables_to_html(r.decontam_md)]))
    curves = [(st.name, p) for st in r.stages for p in st.plots]
    sections.append(("Training curves", [f"![{n}]({p})" for n, p in curves],
                     [f"<img src='{html.escape(p)}' alt='{html.escape(n)} curves'>" for n, p in curves]))

    md = [f"# {r.title}", ""] + [f"- {n}" for n in r.notes] + [""]
    for title, lines, _ in sections:
        md += [f"## {title}", "", *lines, ""]
    md += ["## Resolved configs", ""]
    for st in r.stages:
        if st.config_text:
            md += [f"### {st.name}", "", "```yaml", st.config_text.strip(), "```", ""]
    md_path = run_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n")

    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(r.title)}</title>",
         f"<style>{CSS}</style></head><body><h1>{html.escape(r.title)}</h1>"]
    if r.notes:
        h.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in r.notes) + "</ul>")
    for title, _, parts in sections:
        h += [f"<h2>{html.escape(title)}</h2>", *parts]
    h.append("<h2>Resolved configs</h2>")
    for st in r.stages:
        if st.config_text:
            h.append(f"<details><summary>{html.escape(st.name)}</summary><pre>{html.escape(st.config_text)}</pre></details>")
    h.append("</body></html>")
    html_path = run_dir / "report.html"
    html_path.write_text("\n".join(h))
    return md_path, html_path


JUDGE_NOTE = ("What a 135M judge can and cannot tell: it returns the rating format for many responses (the "
              "parse rate above), but its ratings crowd into a few values (the histogram) and many prompts end "
              "tied or with fewer than two parsed ratings (no pair), so its pairs are few and noisy. It cannot "
              "check whether a math answer or a fact is right, and docs/RESULTS_DATA.md shows it continuing "
              "the text it was asked to rate and picking between two nonsense answers; its agreement with "
              "human preferences is not measured here. The loop, not the judge, is what this run shows: DPO "
              "mixes its pairs with human-labelled hh-rlhf pairs, and DPO's held-out target is measured on those.")


def prefs_lines(st: dict) -> list[str]:
    j = st.get("judge", {})
    hist = "; ".join(f"{aspect}: " + ", ".join(f"{k}×{v}" for k, v in h.items())
                     for aspect, h in j.get("rating_histogram", {}).items())
    return [f"prompts {st.get('prompts')}, responses {st.get('responses')} "
            f"(failed {st.get('response_failures', 0)}, empty {st.get('empty_responses', 0)})",
            f"judge: {j.get('parsed')}/{j.get('judged')} verdicts parsed ({j.get('parsed_first_try')} at the first "
            f"try, {j.get('parsed_after_retry')} after a retry), {j.get('unparseable')} unparseable, "
            f"{j.get('call_failures')} failed calls",
            f"pairs {st.get('pairs')}; no pair: {st.get('no_pair') or {}}; chosen by model: "
            f"{st.get('chosen_by_model') or {}}",
            f"ratings: {hist or '–'}"]


def synth_lines(st: dict) -> list[str]:
    keep = {k: v for k, v in st.items() if isinstance(v, (int, float, str)) or
            (isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()))}
    return [f"{k}: {v}" for k, v in keep.items()]


def _inline(text: str) -> str:
    """**bold** of a note as HTML, the rest escaped."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


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
