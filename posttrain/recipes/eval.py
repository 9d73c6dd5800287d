"""Evaluation (`posttrain eval`): GSM8K, MATH-500 / MATH and IFEval as Tülu 3 scores them.

    posttrain eval --model runs/sft/final --tasks gsm8k,math500,ifeval --limit 50
    posttrain eval my_eval.yaml limit=50 batch_size=16     # YAML keys = EvalConfig fields

Every `--flag` is the EvalConfig key of the same name (`--output-dir`, `--max-new-tokens`,
`--data TASK=PATH`, `--overwrite`, `--no-progress`), as in every other stage. The runner
(`posttrain.evaluation.runner`) does the work; this file is the stage: config, output directory,
summary. Other stages call `evaluate(model, tokenizer, tasks, limit, out_dir)` in-process
(`posttrain.evaluation.evaluate`; the name is kept here for callers written before #15).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Literal

from posttrain.config import dump_config, field
from posttrain.generation.llm_client import EndpointConfig
from posttrain.generation.vllm_engine import VLLMConfig
from posttrain.evaluation.results import markdown_summary
# Re-exported: these lived here before the runner moved to posttrain/evaluation/ (#15).
from posttrain.evaluation.runner import (DEFAULT_TASKS, check_model_source, default_output_dir,  # noqa: F401
                                         evaluate, load_eval_model, merge_summaries, model_label)
from posttrain.evaluation.suites import SUITES, suite_tasks
from posttrain.evaluation.tasks import TASKS, get_task

FLAG_ALIASES = {"out": "output_dir", "output": "output_dir"}


@dataclasses.dataclass
class EvalConfig:
    model: str = field("smollm2-135m", "HF directory, hub id, or embedded model name")
    tasks: list[str] = field(list(DEFAULT_TASKS), f"tasks to run, from {sorted(TASKS)}")
    suite: str = field("", f"run a named suite instead of `tasks`: {', '.join(SUITES)}")
    missing_data: Literal["auto", "error", "skip"] = field(
        "auto", "a task without data here: stop (error), or skip it and say so (skip); auto = skip in a suite")
    limit: int | None = field(None, "first N samples of each task (None = all)")
    output_dir: str = field("", "run directory (default: runs/eval/<model name>)")
    batch_size: int = field(32, "sequences decoded together (engine cache rows)")
    flush_every: int = field(0, "prompts per engine call; rows are written after each (0 = 4 x batch_size)")
    max_new_tokens: int | None = field(None, "override every task's generation budget (None = the task's)")
    device: str = field("auto", "auto, cpu, cuda")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field("auto", "auto = fp32 on CPU, bf16 on CUDA")
    chat_template: str = field("model", "'model' (the tokenizer's own), 'tulu', or a Jinja template")
    data: dict[str, str] = field({}, "data file per task, e.g. data.gsm8k=path.jsonl or hf:<id> (default: shared data)")
    seed: int = field(0, "sampling seed (decoding is greedy; used only by sampling tasks)")
    backend: Literal["auto", "fast", "hf", "vllm"] = field("auto", "generation backend: the engine's auto/fast/hf, "
                                                                  "or vllm (pip install -e .[vllm]; docs/VLLM.md)")
    vllm: VLLMConfig = field(VLLMConfig(), "backend=vllm: the vLLM engine's settings")
    overwrite: bool = field(False, "discard existing results in output_dir instead of resuming")
    progress: bool = field(True, "show a progress bar")
    judge: EndpointConfig | None = field(None, "LLM judge for judged tasks (alpaca_eval, xstest with classifier=judge): "
                                               "judge.base_url + judge.model, or judge.checkpoint (served in-process)")
    judge_logprobs: int = field(0, "ask the judge endpoint for this many first-token alternatives and read preferences "
                                   "as probabilities (hosted APIs; `posttrain serve` does not return them)")
    report_to: list[str] = field([], "experiment trackers: any of tensorboard, wandb, mlflow, trackio "
                                     "(pip install -e .[trackers])")
    run_name: str | None = field(None, "tracker run name (default: the output directory's name)")
    run_group: str | None = field(None, "tracker group tying runs together")

    def validate(self):
        from posttrain.tracking import check_report_to

        check_report_to(self.report_to)
        if self.suite:
            if self.tasks != list(DEFAULT_TASKS):
                raise ValueError("give tasks or suite, not both")
            self.tasks = suite_tasks(self.suite)
        if not self.tasks:
            raise ValueError("tasks is empty: give at least one of " + ", ".join(sorted(TASKS)))
        names = [get_task(name).name for name in self.tasks]  # unknown names fail here
        for name in self.data:
            if name not in names:
                raise ValueError(f"data.{name}: '{name}' is not in tasks {names}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.batch_size < 1 or self.flush_every < 0:
            raise ValueError("batch_size must be >= 1 and flush_every >= 0")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def main(cfg: EvalConfig) -> int:
    out = Path(cfg.output_dir or default_output_dir(cfg.model))
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    try:
        with contextlib.ExitStack() as stack:
            judge = None
            if cfg.judge is not None:  # judgments cached in the run directory: a resumed run re-asks nothing
                from posttrain.evaluation.judge import open_judge

                judge = stack.enter_context(open_judge(cfg.judge, out / "judge_cache.jsonl",
                                                      logprobs=cfg.judge_logprobs))
            summary = evaluate(cfg.model, None, cfg.tasks, cfg.limit, out, batch_size=cfg.batch_size,
                               flush_every=cfg.flush_every or None, max_new_tokens=cfg.max_new_tokens,
                               data_paths=cfg.data, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype,
                               chat_template=cfg.chat_template, backend=cfg.backend, vllm=cfg.vllm,
                               overwrite=cfg.overwrite, progress=cfg.progress, judge=judge,
                               missing_data=cfg.missing_data
                               if cfg.missing_data != "auto" else ("skip" if cfg.suite else "error"))
    except (ValueError, OSError) as e:
        if os.environ.get("POSTTRAIN_DEBUG"):
            raise
        # transformers' and the OS's messages can span lines; the user gets exactly one
        raise ValueError(" ".join(str(e).split())) from None
    print(markdown_summary(summary))
    if cfg.report_to:
        track(cfg, out, summary)
    print(f"[eval] results in {out} ({summary['wall_s']:.0f} s)")
    return 0


def track(cfg: EvalConfig, out: Path, summary: dict) -> None:
    """The results to the trackers of `report_to`: the config, one table (a row per task, a column
    per metric), the metrics as numbers at step 0, and summary.md. A re-run of the same output
    directory (eval resumes) continues the same tracker runs."""
    from posttrain.tracking import numeric, open_trackers, wide_table

    metrics = {task: numeric(res["metrics"]) for task, res in summary["tasks"].items()}
    trackers = open_trackers(cfg.report_to, out, name=cfg.run_name, group=cfg.run_group,
                             config=dataclasses.asdict(cfg), job_type="eval", resume=True)
    try:
        trackers.log_metrics(0, {f"eval/{task}/{m}": v for task, ms in metrics.items() for m, v in ms.items()})
        trackers.log_table("eval/results", *wide_table(metrics, key="task"), step=0)
        for name in ("summary.md", "config.yaml"):
            trackers.log_artifact(out / name)
    finally:
        trackers.finish()
