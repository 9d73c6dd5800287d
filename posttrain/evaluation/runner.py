"""The evaluation runner: one task's samples -> prompts -> engine -> scored rows -> metrics.

`evaluate(model, tokenizer, tasks, limit, out_dir)` is what `posttrain eval` and the pipeline call;
`generate_rows` is the piece every caller shares, including RLVR's held-out evaluation
(`evaluation/heldout.py`), so a training-time accuracy is computed by the same code as an eval.

Per task: load the samples (fail fast on bad data before the model loads), render each prompt as
`chat_template(messages, add_generation_prompt=True) + assistant_prefix`, skip ids already in
`<task>.jsonl`, generate the rest greedily with the task's budget and stop strings (prompts
sorted by length, one engine call per `flush_every` prompts), score every output with the task's
own grader and append the rows. The summary is always recomputed from the JSONL, so a killed and
resumed run reports exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from posttrain.evaluation.stats import metric_intervals
from posttrain.evaluation.results import (append_rows, check_fingerprint, markdown_summary, meta_path,
                                          read_meta, read_rows, rows_path, write_json_atomic)
from posttrain.evaluation.tasks import TASKS, LoglikOutput, Sample, Task, get_task, render_prompt
from posttrain.evaluation.tasks.base import MissingData

DEFAULT_TASKS = ("gsm8k", "math500", "ifeval")


# -- model -----------------------------------------------------------------------------------------


def check_model_source(name: str) -> None:
    """Fail in one line on a model that cannot exist, before transformers tries the network."""
    from posttrain.models import EMBEDDED_MODELS

    if name in EMBEDDED_MODELS:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model {name}: not a Hugging Face model directory (no config.json)")
        return
    if path.exists():
        raise ValueError(f"model {name}: is a file; give a model directory, a hub id or an embedded model name")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name):
        raise ValueError(f"model {name}: no such directory, and not a hub id (org/name) or an embedded "
                         f"model ({', '.join(EMBEDDED_MODELS)})")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_eval_model(name: str, device: str = "auto", dtype: str = "auto"):
    from posttrain.models import default_dtype, load_model, parse_dtype

    dev = resolve_device(device)
    model = load_model(name, dtype=default_dtype(dev) if dtype == "auto" else parse_dtype(dtype), device=dev)
    return model.eval()


def model_label(model_or_path: Any) -> str:
    if isinstance(model_or_path, (str, Path)):
        return str(model_or_path)
    return str(getattr(getattr(model_or_path, "config", None), "_name_or_path", "") or "<in-memory model>")


# -- one task --------------------------------------------------------------------------------------


def sampling_params(task: Task, max_new_tokens: int | None, seed: int):
    from posttrain.generation import SamplingParams

    g = task.generation
    return SamplingParams(max_new_tokens=max_new_tokens or g.max_new_tokens,
                          temperature=g.temperature if g.do_sample else 0.0,
                          top_p=g.top_p if g.do_sample else 1.0, n=g.num_samples, stop=tuple(g.stop),
                          seed=seed, logprobs=False)


def load_samples(task: Task, path: str | None, limit: int | None) -> list[Sample]:
    try:
        samples = task.load(path, limit)
    except OSError as e:  # unreadable file, permissions, ...: one line naming the file
        raise ValueError(f"{task.name}: cannot read data {e.filename or path}: {e.strerror or e}") from None
    if not samples:
        raise ValueError(f"{task.name}: no samples in {path or 'the default data file'}")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{task.name}: sample ids are not unique in {path or 'the default data file'}")
    return samples


def result_row(task: Task, sample: Sample, prompt: str, completions: list, scores: dict | None = None) -> dict:
    """One stored row. A sampling task's row holds lists (one entry per sample) where a
    generation task's holds scalars."""
    texts = [c.text for c in completions]
    one = len(completions) == 1 and task.generation.num_samples == 1
    scores = dict(task.score(sample, texts[0] if one else texts) if scores is None else scores)
    extracted = scores.pop("extracted", None)
    pick = (lambda xs: xs[0]) if one else list
    return {"task": task.name, "id": sample.id, "prompt": prompt, "output": pick(texts),
            "extracted": extracted, "scores": scores,
            "finish_reason": pick([c.finish_reason for c in completions]),
            "num_tokens": pick([len(c.token_ids) for c in completions]), "ground_truth": sample.ground_truth,
            "meta": sample.meta}


def generate_rows(task: Task, samples: Sequence[Sample], prompts: Sequence[str], token_ids: Sequence[list[int]],
                  engine, params) -> tuple[list[dict], dict]:
    """One engine call over these samples -> (one scored result row per sample, the call's stats)."""
    t0 = time.perf_counter()
    outs = engine.generate(list(token_ids), params)
    seconds = time.perf_counter() - t0
    assert len(outs) == len(samples) * params.n
    per = [outs[i * params.n:(i + 1) * params.n] for i in range(len(samples))]  # engine order: prompt, sample
    batch = getattr(task, "score_batch", None)
    scores = batch(list(samples), [[c.text for c in cs] if params.n > 1 else cs[0].text for cs in per]) \
        if batch else [None] * len(samples)
    rows = [result_row(task, s, p, cs, sc) for s, p, cs, sc in zip(samples, prompts, per, scores)]
    call = {"samples": len(samples), "seconds": round(seconds, 3),
            "prompt_tokens": sum(len(ids) for ids in token_ids),
            "generated_tokens": sum(len(o.token_ids) for o in outs),
            "score_s": round(time.perf_counter() - t0 - seconds, 3)}
    return rows, call


def rescore_rows(task: Task, samples: Sequence[Sample], rows: dict[str, dict]) -> list[dict]:
    """Stored rows of these samples with fresh scores from `task.score_batch` on their stored outputs."""
    fresh = task.score_batch(list(samples), [rows[s.id]["output"] for s in samples])
    out = []
    for s, scores in zip(samples, fresh):
        scores = dict(scores)
        out.append({**rows[s.id], "extracted": scores.pop("extracted", None), "scores": scores})
    return out


def loglik_rows(task: Task, samples: Sequence[Sample], prompts: Sequence[str], tokenizer, engine
                ) -> tuple[list[dict], dict]:
    """Score every continuation of these samples after its prompt -> (rows, the call's stats)."""
    from posttrain.evaluation.loglik import encode_pair, score_requests_cached

    t0 = time.perf_counter()
    options = [list(task.continuations(s)) for s in samples]
    requests = [encode_pair(tokenizer, p, c) for p, opts in zip(prompts, options) for c in opts]
    scorer = getattr(engine, "loglik", None)
    results = scorer(requests) if scorer else score_requests_cached(engine.model, requests)
    seconds = time.perf_counter() - t0
    rows, at = [], 0
    for s, p, opts in zip(samples, prompts, options):
        res, at = results[at:at + len(opts)], at + len(opts)
        out = LoglikOutput([r.logprob for r in res], [r.num_tokens for r in res], [r.greedy for r in res], opts)
        scores = dict(task.score(s, out))
        extracted = scores.pop("extracted", None)
        rows.append({"task": task.name, "id": s.id, "prompt": p,
                     "output": {"logprobs": out.logprobs, "num_tokens": out.num_tokens, "greedy": out.greedy},
                     "extracted": extracted, "scores": scores, "finish_reason": "loglik", "num_tokens": 0,
                     "ground_truth": s.ground_truth, "meta": s.meta})
    call = {"samples": len(samples), "seconds": round(seconds, 3),
            "prompt_tokens": sum(len(c) + len(x) for c, x in requests), "generated_tokens": 0,
            "scored_tokens": sum(len(x) for _, x in requests),
            "score_s": round(time.perf_counter() - t0 - seconds, 3)}
    return rows, call


def summarize_task(task: Task, samples: list[Sample], rows: dict[str, dict], meta: dict) -> dict:
    """Metrics recomputed from the stored rows of exactly these samples."""
    missing = [s.id for s in samples if s.id not in rows]
    assert not missing, f"{task.name}: no result rows for {missing[:3]}"
    picked = [rows[s.id] for s in samples]
    metrics = task.aggregate([r["scores"] for r in picked], samples)
    intervals = metric_intervals(task, [r["scores"] for r in picked], samples)
    gen_s = sum(c["seconds"] for c in meta.get("calls", []))
    gen_tokens = sum(c["generated_tokens"] for c in meta.get("calls", []))
    finish = [f for r in picked for f in _as_list(r["finish_reason"])]
    return {"primary_metric": task.primary_metric, "n": len(samples), "metrics": metrics, "intervals": intervals,
            "generated_tokens": sum(sum(_as_list(r["num_tokens"])) for r in picked),
            "finish_reasons": {k: finish.count(k) for k in ("eos", "stop", "length")},
            "generation_s": gen_s, "tokens_per_s": gen_tokens / gen_s if gen_s > 0 else 0.0}


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def run_task(task: Task, samples: list[Sample], get_engine, tokenizer, out_dir: Path | None, *,
             fingerprint: dict, max_new_tokens: int | None, seed: int, flush_every: int,
             overwrite: bool, progress: bool, log) -> dict:
    start = time.perf_counter()
    rpath = rows_path(out_dir, task.name) if out_dir else None
    mpath = meta_path(out_dir, task.name) if out_dir else None
    if out_dir and overwrite:
        rpath.unlink(missing_ok=True)
        mpath.unlink(missing_ok=True)
    meta = (read_meta(mpath) if mpath else None)
    check_fingerprint(meta, fingerprint, mpath)
    meta = meta or {"fingerprint": fingerprint, "calls": []}
    rows = read_rows(rpath) if rpath else {}

    prompts = {s.id: render_prompt(tokenizer, s) for s in samples}
    for s in samples:
        if s.id in rows and rows[s.id].get("prompt") != prompts[s.id]:
            raise ValueError(f"{rpath}: the stored prompt of {s.id} differs from this run's (data or chat "
                             f"template changed); use another output_dir or overwrite=true")
    retry = [s for s in samples if s.id in rows and (rows[s.id].get("scores") or {}).get("judge_error")]
    if retry and hasattr(task, "score_batch"):  # a failed judge call is asked again, the output kept
        again = rescore_rows(task, retry, rows)
        if out_dir:
            append_rows(rpath, again)  # a later row of an id replaces the earlier one
        rows.update((r["id"], r) for r in again)
        log(f"[eval] {task.name}: judged {len(retry)} stored outputs again (their judge call had failed)")
    pending = [s for s in samples if s.id not in rows]
    log(f"[eval] {task.name}: {len(samples)} samples, {len(samples) - len(pending)} already done, "
        f"{len(pending)} to generate")
    # Sorted by prompt length: each engine call sees similar lengths (less prefill padding).
    token_ids = {s.id: tokenizer(prompts[s.id], add_special_tokens=False)["input_ids"] for s in pending}
    loglik = getattr(task, "kind", "generation") == "loglik"
    if not loglik:  # loglik keeps data order: neighbours share few-shot prefixes (one subject's shots)
        pending.sort(key=lambda s: len(token_ids[s.id]))
    params = None if loglik else sampling_params(task, max_new_tokens, seed)

    from tqdm import tqdm

    bar = tqdm(total=len(samples), initial=len(samples) - len(pending), desc=task.name, unit="sample",
               disable=not progress or not pending, file=sys.stderr, dynamic_ncols=True)
    for i in range(0, len(pending), flush_every):
        chunk = pending[i:i + flush_every]
        if loglik:
            new, call = loglik_rows(task, chunk, [prompts[x.id] for x in chunk], tokenizer, get_engine())
        else:
            new, call = generate_rows(task, chunk, [prompts[x.id] for x in chunk], [token_ids[x.id] for x in chunk],
                                      get_engine(), params)
        meta["calls"].append(call)
        if out_dir:
            append_rows(rpath, new)
            write_json_atomic(mpath, meta)
        rows.update((r["id"], r) for r in new)
        bar.update(len(chunk))
        bar.set_postfix(tok_s=f"{call['generated_tokens'] / max(call['seconds'], 1e-9):.0f}")
    bar.close()
    summary = summarize_task(task, samples, rows, meta)
    summary.update(limit=len(samples), newly_generated=len(pending), wall_s=time.perf_counter() - start)
    return summary


# -- the whole evaluation --------------------------------------------------------------------------


def evaluate(model_or_path: Any, tokenizer: Any = None, tasks: Sequence[str | Task] = DEFAULT_TASKS,
             limit: int | None | dict[str, int] = None, out_dir: str | Path | None = None, *, batch_size: int = 32,
             flush_every: int | None = None, max_new_tokens: int | None | dict[str, int] = None,
             data_paths: dict[str, str] | None = None, seed: int = 0, device: str = "auto",
             dtype: str = "auto", chat_template: str | None = None, backend: str = "auto", vllm=None,
             overwrite: bool = False, progress: bool = True, engine=None, log=print,
             missing_data: str = "error", judge=None) -> dict:
    """Evaluate a model (an HF directory / embedded name, or a loaded model + its tokenizer).

    Writes `<task>.jsonl`, `<task>.meta.json`, `summary.json` and `summary.md` into `out_dir`
    (nothing is written and nothing resumed when `out_dir` is None) and returns the summary:
    `{"model", "limit", "wall_s", "tasks": {name: {"metrics", "primary_metric", "n", ...}}}`.
    `engine` (anything with `Engine.generate`'s signature) replaces the one built here.
    `backend`: the native engine's auto/fast/hf, or "vllm" (a `VLLMEngine` with the `vllm`
    settings, a `VLLMConfig`; from a path it loads the weights itself, without a torch copy).
    `limit` and `max_new_tokens` may be dicts (task name -> value); a task they do not name gets
    its default (all samples, its own generation budget).
    """
    start = time.perf_counter()
    # unknown names fail here, before anything loads; Task objects (custom shots, scorer) pass through
    task_objs = [get_task(t) if isinstance(t, str) else t for t in tasks]
    if len({t.name for t in task_objs}) != len(task_objs):
        raise ValueError(f"tasks repeat a name: {[t.name for t in task_objs]}")
    data_paths = dict(data_paths or {})
    samples, skipped = {}, {}
    for t in task_objs:
        try:
            samples[t.name] = load_samples(t, data_paths.get(t.name), _for_task(limit, t.name))
        except MissingData as e:
            if missing_data != "skip":
                raise
            skipped[t.name] = str(e)
            log(f"[eval] skipping {e}")
    task_objs = [t for t in task_objs if t.name in samples]
    task_objs = [_with_judge(t, judge, missing_data, skipped, log) for t in task_objs]
    task_objs = [t for t in task_objs if t is not None]

    label = model_label(model_or_path)
    from_path = isinstance(model_or_path, (str, Path))
    model = None if from_path else model_or_path
    if from_path:
        from posttrain.models import load_tokenizer

        check_model_source(str(model_or_path))
        tokenizer = load_tokenizer(str(model_or_path), chat_template=chat_template or "model")
    elif tokenizer is None:
        raise ValueError("evaluate: pass the tokenizer together with an in-memory model")
    elif chat_template is not None:
        from posttrain.models import apply_chat_template_choice

        apply_chat_template_choice(tokenizer, chat_template)

    def get_engine():
        # the model loads only when some sample still needs generating (a finished run re-summarises)
        nonlocal model, engine
        if engine is None and backend == "vllm":
            from posttrain.generation.vllm_engine import make_engine

            engine = make_engine("vllm", str(model_or_path) if from_path else model, tokenizer,
                                 max_batch_size=batch_size, vllm=vllm, dtype=dtype, device=device)
        elif engine is None:
            from posttrain.generation import Engine

            model = load_eval_model(str(model_or_path), device, dtype) if from_path else model
            engine = Engine(model, tokenizer, backend=backend, max_batch_size=batch_size)
        return engine

    out = Path(out_dir) if out_dir is not None else None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    results = {}
    for task in task_objs:
        budget = _for_task(max_new_tokens, task.name)
        fingerprint = {"model": label, "max_new_tokens": budget or task.generation.max_new_tokens,
                       "stop": list(task.generation.stop), "do_sample": task.generation.do_sample}
        if getattr(task, "kind", "generation") != "generation":  # older runs' fingerprints stay valid
            fingerprint = {"model": label, "kind": task.kind}
        if task.generation.num_samples > 1:
            fingerprint |= {"num_samples": task.generation.num_samples, "temperature": task.generation.temperature,
                            "top_p": task.generation.top_p, "seed": seed}
        with torch.no_grad():
            results[task.name] = run_task(
                task, samples[task.name], get_engine, tokenizer, out, fingerprint=fingerprint,
                max_new_tokens=budget, seed=seed, flush_every=flush_every or 4 * batch_size,
                overwrite=overwrite, progress=progress, log=log)
        t = results[task.name]
        log(f"[eval] {task.name}: {t['primary_metric']} = {100 * t['metrics'][t['primary_metric']]:.2f} "
            f"(n={t['n']}, {t['wall_s']:.0f} s, {t['tokens_per_s']:.0f} tok/s)")
    summary = {"model": label, "limit": limit, "wall_s": time.perf_counter() - start, "tasks": results}
    if skipped:
        summary["skipped"] = skipped
    if out:
        summary = merge_summaries(out / "summary.json", summary)
        write_json_atomic(out / "summary.json", summary)
        (out / "summary.md").write_text(markdown_summary(summary), encoding="utf-8")
    return summary


def _for_task(value, name: str):
    """A per-run setting that may be given per task (dict) or once for all (scalar / None)."""
    return value.get(name) if isinstance(value, dict) else value


def _with_judge(task: Task, judge, missing_data: str, skipped: dict, log):
    """The task with `judge` set when it takes one; None (skipped) or an error when it needs one and
    none was given, before anything is generated."""
    if not hasattr(task, "judge"):
        return task
    if judge is not None and getattr(task, "judge") is None:
        return dataclasses.replace(task, judge=judge)
    if getattr(task, "needs_judge", False) and getattr(task, "judge") is None:
        why = (f"{task.name}: scoring needs a judge: --judge.base_url URL --judge.model NAME (any "
               f"OpenAI-compatible endpoint) or --judge.checkpoint DIR (a local model served in-process)")
        if missing_data != "skip":
            raise MissingData(why)
        skipped[task.name] = why
        log(f"[eval] skipping {why}")
        return None
    return task


def merge_summaries(path: Path, summary: dict) -> dict:
    """Keep the tasks of earlier invocations in this directory (same model) beside this run's."""
    try:
        previous = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError:  # derived data: a damaged file is simply rebuilt
        previous = {}
    if not isinstance(previous, dict) or previous.get("model") != summary["model"]:
        return summary
    tasks = {**previous.get("tasks", {}), **summary["tasks"]}
    order = list(TASKS)  # registry order (gsm8k, math500, math, ifeval), custom task names last
    ranked = sorted(tasks, key=lambda k: order.index(k) if k in order else len(order))
    merged = {**summary, "tasks": {k: tasks[k] for k in ranked}}
    skipped = {k: v for k, v in {**previous.get("skipped", {}), **summary.get("skipped", {})}.items() if k not in tasks}
    merged.pop("skipped", None)
    return merged | ({"skipped": skipped} if skipped else {})


def default_output_dir(model: str) -> str:
    slug = re.sub(r"[^\w.-]+", "_", Path(model.rstrip("/")).name) or "model"
    return str(Path("runs") / "eval" / slug)
