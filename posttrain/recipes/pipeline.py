"""The whole Tülu 3 pipeline in one run directory (`posttrain run recipe.yaml`, `posttrain demo`).

decontaminate -> sft -> (prefs) -> dpo -> rlvr -> eval -> report. Each stage writes into
`<output_dir>/<stage>/`, and its product feeds the next: the decontaminated SFT set trains SFT, the
SFT model starts DPO (and generates on-policy preference data when `prefs` is on), the DPO model
starts RLVR, and every model is evaluated on the same slices. A finished stage leaves `DONE.json`;
re-running the command skips finished stages and resumes an interrupted one from its last
checkpoint (`run.resume=true`). `posttrain report RUN_DIR` renders the report of a run directory
again from what its stages left on disk.

The stages are the rows of STAGE_TABLE. A row's run function takes the pipeline config and the
artefacts of the stages before it (the newest `model`, `sft_data`, `dpo_data`) and returns the
artefacts it adds; its `DONE.json` keeps them for the runs that skip it.

Under torchrun every rank runs the training stages together (FSDP2); decontamination, preference
data, evaluation and the report run on rank 0 alone, and the other ranks wait for the stage's
`DONE.json` before going on, so a stage always starts from a finished predecessor.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable

from posttrain.config import ConfigError, describe, dump_config, field, load_config, parse_argv
from posttrain.report import StageInfo, write_report
from posttrain.stages import resolve

REPO = Path(__file__).resolve().parents[2]

@dataclasses.dataclass
class StageSpec:
    enabled: bool = field(True, "run this stage")
    config: str | None = field(None, "the stage's own YAML config (relative to the recipe file)")
    overrides: list[str] = field([], "key=value overrides for the stage config")
    heldout: int = field(0, "sft/dpo: rows of the stage's data held out (seeded) and scored by eval's "
                            "chat_nll / preference tasks instead of trained on")
    heldout_max_chars: int | None = field(None, "only rows at most this long (as JSON) are held out")
    extra_data: list[str] = field([], "sft/dpo: files trained on after the data an earlier stage made "
                                      "(Tülu 3 mixes on-policy pairs with off-policy ones)")
    expected_s: float | None = field(None, "what the stage took on the reference machine (for the ETA)")


@dataclasses.dataclass
class EvalSpec:
    enabled: bool = field(True, "evaluate the models of the run")
    tasks: list[str] = field(["gsm8k", "math500", "ifeval"], "eval tasks")
    limit: int | None = field(None, "first N samples of each task (None = all)")
    data: dict[str, str] = field({}, "task -> data file (required for `verifiable`: held-out RLVR rows)")
    max_new_tokens: int | None = field(None, "override every task's generation budget")
    batch_size: int = field(32, "sequences decoded together")
    models: list[str] = field(["base", "sft", "dpo", "rlvr"], "which stages' models to evaluate")
    task_limits: dict[str, int] = field({}, "task -> first N samples (overrides `limit` for that task)")
    task_max_new_tokens: dict[str, int] = field({}, "task -> generation budget (overrides `max_new_tokens`)")
    task_models: dict[str, list[str]] = field({}, "task -> the only models it scores (default: every one)")
    targets: dict[str, list[str]] = field({}, "stage -> the task/metric entries it is meant to move; the "
                                              "report leads with them, and every other task's primary "
                                              "metric is checked for significant drops")
    examples: int = field(3, "prompts per generation task shown with base and final outputs side by side")
    expected_s: float | None = field(None, "what evaluation took on the reference machine (for the ETA)")


@dataclasses.dataclass
class PipelineConfig:
    name: str = field("posttrain pipeline", "title of the report")
    output_dir: str = field("runs/pipeline", "run directory holding every stage")
    base_model: str = field("smollm2-135m", "the model the pipeline starts from (any checkpoint)")
    chat_template: str = field("model", "chat template for every stage: model, tulu, or a Jinja string")
    stages: list[str] = field([], "run only these stages (default: every enabled one)")
    seed: int | None = field(None, "one seed for every stage (run.seed / seed) and the held-out splits; "
                                   "None keeps each stage config's own")
    progress_every_s: float = field(30.0, "seconds between progress lines (stage, ETA); 0 = only at stage starts")
    synth: StageSpec = field(StageSpec(enabled=False), "persona-driven synthetic SFT data and prompts")
    decontaminate: StageSpec = field(StageSpec(), "n-gram decontamination of the SFT prompts")
    sft: StageSpec = field(StageSpec(), "supervised fine-tuning")
    prefs: StageSpec = field(StageSpec(enabled=False), "on-policy preference data from the SFT model")
    dpo: StageSpec = field(StageSpec(), "preference tuning")
    rlvr: StageSpec = field(StageSpec(), "RL with verifiable rewards")
    eval: EvalSpec = field(EvalSpec(), "evaluation of base and stage models")
    recipe_dir: str = field("", "directory stage config paths are relative to (set from the recipe file)")
    rank_wait_s: float = field(86400.0, "under torchrun: how long ranks > 0 wait for rank 0's single-process stages")
    report_to: list[str] = field([], "experiment trackers for every training stage and the report: any of "
                                     "tensorboard, wandb, mlflow, trackio (pip install -e .[trackers])")
    run_name: str | None = field(None, "tracker group of the run's stages (default: the output directory's name)")

    def validate(self):
        from posttrain.tracking import check_report_to

        check_report_to(self.report_to)
        for stage in ("synth", "decontaminate", "prefs", "rlvr"):
            if getattr(self, stage).heldout:
                raise ConfigError(f"{stage}.heldout: only sft and dpo hold out rows (rlvr has eval.paths)")


def _stage_config(cfg: PipelineConfig, stage: str, extra: list[str]):
    """-> (the stage's own config, from its recipe entry + `extra` overrides; its entry function)."""
    _, cls, entry = resolve(stage)
    spec, recipe_dir, path = getattr(cfg, stage), Path(cfg.recipe_dir or "."), None
    if spec.config:
        path = Path(spec.config)
        if not path.is_absolute():
            path = (recipe_dir / path) if (recipe_dir / path).exists() else (REPO / path)
    return load_config(cls, path, list(spec.overrides) + extra), entry


def _done(stage_dir: Path) -> dict | None:
    marker = stage_dir / "DONE.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def _mark_done(stage_dir: Path, seconds: float, **info) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "DONE.json").write_text(json.dumps({"seconds": seconds, **info}, indent=2))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _wait_done(stage_dir: Path, timeout_s: float) -> dict:
    """Non-zero ranks: wait for rank 0 to mark `stage_dir` finished."""
    deadline = time.time() + timeout_s
    while (done := _done(stage_dir)) is None:
        if time.time() > deadline:
            raise TimeoutError(f"rank {_rank()}: {stage_dir / 'DONE.json'} did not appear within {timeout_s:.0f} s; "
                               f"rank 0 failed or is stuck (see its log)")
        time.sleep(1.0)
    return done


def _wait_file(path: Path, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while not path.is_file():
        if time.time() > deadline:
            raise TimeoutError(f"rank {_rank()}: {path} did not appear within {timeout_s:.0f} s")
        time.sleep(0.5)


def _final_model(stage_dir: Path) -> str:
    final = stage_dir / "final"
    if not (final / "config.json").is_file():
        raise RuntimeError(f"{stage_dir}: the stage finished without a final model")
    return str(final)


# ------------------------------------------------------------------------------------ the stages

@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # also its `posttrain <stage>` registry entry and its PipelineConfig field
    run: Callable[[PipelineConfig, dict], dict]  # (pipeline config, artefacts so far) -> its artefacts
    produces: tuple[str, ...]
    every_rank: bool = False  # training: every torchrun rank runs it (FSDP2); else rank 0 alone


def _resolve(cfg: PipelineConfig, path: str) -> Path:
    """A data path of the recipe: as given when it exists from here, else relative to the recipe."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else Path(cfg.recipe_dir or ".") / p


def _dir(cfg: PipelineConfig, stage: str) -> Path:
    return Path(cfg.output_dir) / stage


def _seed(cfg: PipelineConfig, key: str) -> list[str]:
    return [f"{key}={cfg.seed}"] if cfg.seed is not None else []


def _synth(cfg: PipelineConfig, artefacts: dict) -> dict:
    stage_dir = _dir(cfg, "synth")
    scfg, fn = _stage_config(cfg, "synth", [f"out_dir={stage_dir}"] + _seed(cfg, "seed"))
    fn(scfg)
    rows = stage_dir / "sft.jsonl"
    return {"synth_data": [str(rows)] if rows.is_file() and rows.stat().st_size else []}


def _decontaminate(cfg: PipelineConfig, artefacts: dict) -> dict:
    stage_dir = _dir(cfg, "decontaminate")
    # What gets cleaned is the SFT stage's own data (and the synthetic rows, whose prompts also
    # feed the preference stage), unless the decontam config names training sets.
    sft_cfg, _ = _stage_config(cfg, "sft", [])
    train = {f"sft{i}": p for i, p in enumerate(sft_cfg.data.paths)}
    train |= {f"synth{i}" if i else "synth": p for i, p in enumerate(artefacts.get("synth_data", []))}
    dcfg, fn = _stage_config(cfg, "decontaminate", [f"out_dir={stage_dir}"])
    dcfg.train = dcfg.train or train
    fn(dcfg)
    filtered = stage_dir / "filtered"
    kept = {n: str(filtered / f"{n}.jsonl") for n in train if (filtered / f"{n}.jsonl").is_file() and n in dcfg.train}
    out = {"sft_data": list(kept.values())}
    if any(n.startswith("synth") for n in kept):
        out["prefs_prompts"] = [p for n, p in kept.items() if n.startswith("synth")]
    return out


def _prefs(cfg: PipelineConfig, artefacts: dict) -> dict:
    stage_dir = _dir(cfg, "prefs")
    extra = [f"out_dir={stage_dir}"] + _seed(cfg, "seed")
    if artefacts.get("prefs_prompts"):  # --full: the decontaminated synthetic prompts
        extra.append(f"prompts={artefacts['prefs_prompts'][0]}")
    pcfg, fn = _stage_config(cfg, "prefs", extra)
    if not pcfg.policy.base_url:  # on-policy: the responses come from the model SFT just made
        pcfg.policy.checkpoint, pcfg.policy.chat_template = artefacts["model"], cfg.chat_template
    fn(pcfg)
    pairs = stage_dir / "preferences.jsonl"
    return {"dpo_data": [str(pairs)] if pairs.is_file() and pairs.stat().st_size else []}


HELDOUT_KIND = {"sft": "chat", "dpo": "preference"}  # what eval's chat_nll / preference tasks read


def _split(cfg: PipelineConfig, stage: str, paths: list[str], stage_dir: Path) -> tuple[str, str]:
    """Hold out `heldout` rows of the stage's data: (train file, held-out file). Rank 0 writes them."""
    from posttrain.data.heldout import split_files

    split_dir = stage_dir / "split"
    if _rank() == 0:
        spec = getattr(cfg, stage)
        split_files(paths, spec.heldout, cfg.seed or 0, split_dir, HELDOUT_KIND[stage], spec.heldout_max_chars)
    else:
        _wait_file(split_dir / "split.json", cfg.rank_wait_s)
    return str(split_dir / "train.jsonl"), str(split_dir / "heldout.jsonl")


def _trainer(stage: str, data: str | None) -> Callable[[PipelineConfig, dict], dict]:
    """Run function of a training stage: it starts from the newest model and trains on the `data`
    artefact when an earlier stage produced one, else on its own config's data; with `heldout`
    set, part of that data is held out for evaluation first."""

    def run(cfg: PipelineConfig, artefacts: dict) -> dict:
        stage_dir = _dir(cfg, stage)
        overrides = [f"model.name_or_path={artefacts['model']}", f"model.chat_template={cfg.chat_template}",
                     f"run.output_dir={stage_dir}", f"run.resume={str(stage_dir.exists()).lower()}"]
        overrides += _seed(cfg, "run.seed") + _tracker_overrides(cfg, stage)
        paths, new = (artefacts.get(data) if data else None), {}
        if paths and getattr(cfg, stage).extra_data:
            paths = list(paths) + [str(_resolve(cfg, p)) for p in getattr(cfg, stage).extra_data]
        if getattr(cfg, stage).heldout:
            paths = paths or list(_stage_config(cfg, stage, [])[0].data.paths)
            train, new[f"heldout_{stage}"] = _split(cfg, stage, paths, stage_dir)
            paths = [train]
        if paths:
            overrides.append("data.paths=[" + ",".join(paths) + "]")
        scfg, fn = _stage_config(cfg, stage, overrides)
        fn(scfg)
        if _rank() != 0:  # rank 0 writes the final model after the others are done
            _wait_done(stage_dir, cfg.rank_wait_s)
        return {"model": _final_model(stage_dir), **new}

    return run


def _run_group(cfg: PipelineConfig) -> str:
    return cfg.run_name or Path(cfg.output_dir).resolve().name


def _tracker_overrides(cfg: PipelineConfig, stage: str) -> list[str]:
    """A training stage reports to the pipeline's trackers as `<group>/<stage>` in the group (JSON
    values: the config parser reads them as YAML, so a name like `2024` stays a string)."""
    if not cfg.report_to:
        return []
    group = _run_group(cfg)
    return [f"run.report_to={json.dumps(list(cfg.report_to))}", f"run.run_group={json.dumps(group)}",
            f"run.run_name={json.dumps(f'{group}/{stage}')}"]


def _track_report(out: Path, cfg: PipelineConfig, evals: dict) -> None:
    """The pipeline's own tracker run, `<group>/report`: its config, one eval table (a row per
    model, a column per task/metric) and the same numbers as metrics, the report and its plots."""
    from posttrain.tracking import open_trackers, wide_table

    group = _run_group(cfg)
    trackers = open_trackers(cfg.report_to, out, name=f"{group}/report", group=group,
                             config=dataclasses.asdict(cfg), job_type="report", resume=True, store_dir=out)
    try:
        if evals:
            trackers.log_metrics(0, {f"eval/{label}/{k}": v for label, ms in evals.items() for k, v in ms.items()})
            trackers.log_table("eval/results", *wide_table(evals, key="model"), step=0)
        files = [out / "report.md", out / "report.html", out / "pipeline.yaml", *sorted((out / "plots").glob("*.png"))]
        for path in files:
            trackers.log_artifact(path, name=str(path.relative_to(out)))
    finally:
        trackers.finish()


STAGE_TABLE = (
    Stage("synth", _synth, ("synth_data",)),
    Stage("decontaminate", _decontaminate, ("sft_data", "prefs_prompts")),
    Stage("sft", _trainer("sft", "sft_data"), ("model", "heldout_sft"), every_rank=True),
    Stage("prefs", _prefs, ("dpo_data",)),
    Stage("dpo", _trainer("dpo", "dpo_data"), ("model", "heldout_dpo"), every_rank=True),
    Stage("rlvr", _trainer("rlvr", None), ("model",), every_rank=True),
)
# Evaluation is no table row: it leaves no DONE.json (it resumes sample by sample itself), needs
# every stage's model, and runs on rank 0 after the rest.
ORDER = tuple(s.name for s in STAGE_TABLE) + ("eval",)
TRAIN_STAGES = tuple(s.name for s in STAGE_TABLE if s.every_rank)


def _from_done(stage: Stage, stage_dir: Path, done: dict, selected: bool = True) -> dict:
    """The artefacts a finished stage hands on. Its model and held-out rows always count
    (`stages=[dpo]` continues from the finished SFT model; `stages=[eval]` scores the held-out
    rows); its data only when the stage is selected, so that leaving a stage out also leaves out
    the data it made."""
    new = {k: done[k] for k in stage.produces if k in done and k != "model"
           and (selected or k.startswith("heldout_"))}
    if "model" in stage.produces:
        # Found where it lies rather than read from DONE.json: the run directory may have moved,
        # and DONE.json files written before #15 do not name it.
        new["model"] = _final_model(stage_dir)
    return new


def run_pipeline(cfg: PipelineConfig) -> Path:
    from posttrain.train.dist import keep_process_group

    with keep_process_group():  # under torchrun: one process group for every training stage
        return _run_pipeline(cfg)


def _stage_units(cfg: PipelineConfig, stage: str, stage_dir: Path) -> dict:
    """How the progress line counts a training stage: logged steps of its max_steps."""
    from posttrain.progress import max_logged_step

    if stage not in TRAIN_STAGES:
        return {}
    try:
        total = getattr(_stage_config(cfg, stage, [])[0].train, "max_steps", None)
    except (AttributeError, ValueError, OSError):
        total = None
    if not total or total < 0:
        return {}
    return {"done": lambda: max_logged_step(stage_dir / "metrics.jsonl"), "total": total}


def _run_pipeline(cfg: PipelineConfig) -> Path:
    from posttrain.progress import RunProgress

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    main_rank = _rank() == 0
    if main_rank:
        dump_config(cfg, out / "pipeline.yaml")
    wanted = [s for s in ORDER if getattr(cfg, s).enabled and (not cfg.stages or s in cfg.stages)]
    unknown = [s for s in cfg.stages if s not in ORDER]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {', '.join(ORDER)}")
    print(f"[pipeline] {cfg.name}: stages {' -> '.join(wanted)}; run directory {out}", flush=True)
    progress = RunProgress([(s, getattr(cfg, s).expected_s) for s in wanted], out / "progress.json" if main_rank
                           else None, every_s=cfg.progress_every_s if main_rank else 0)
    with progress:
        models, artefacts, infos = _run_stages(cfg, out, wanted, progress, main_rank)
        if not main_rank:  # evaluation and the report are rank 0's
            return out
        evals = {}
        if "eval" in wanted:
            progress.start("eval", **_eval_units(cfg, out, _eval_plan(cfg, models, artefacts)))
            evals = run_evals(cfg, out, models, infos, artefacts)
            progress.finish("eval")
        total = time.time() - progress.t0
        eval_s = next((i.seconds for i in infos if i.name == "eval"), None)
        (out / "timing.json").write_text(json.dumps({"total_s": total, "eval_s": eval_s}, indent=2))
        _write_report(out, cfg, infos, evals, total)
        if cfg.report_to:
            _track_report(out, cfg, evals)
    print(f"[pipeline] finished in {total:.0f} s ({total / 60:.1f} min)", flush=True)
    return out


def _run_stages(cfg: PipelineConfig, out: Path, wanted: list[str], progress, main_rank: bool):
    artefacts: dict = {"model": cfg.base_model}
    models = {"base": cfg.base_model}  # what evaluation scores: the base and each stage's model
    infos: list[StageInfo] = []
    for stage in STAGE_TABLE:
        stage_dir = out / stage.name
        done = _done(stage_dir)
        if stage.name not in wanted:
            new = _from_done(stage, stage_dir, done, selected=False) if done else {}
        elif done:
            print(f"[pipeline] {stage.name}: finished earlier ({done['seconds']:.0f} s), skipping", flush=True)
            progress.skip(stage.name)
            new = _from_done(stage, stage_dir, done)
            infos.append(_info(stage.name, stage_dir, done["seconds"], "done (earlier run)"))
        elif not main_rank and not stage.every_rank:  # rank 0 runs it alone
            print(f"\n[pipeline] ===== {stage.name} =====", flush=True)
            new = _from_done(stage, stage_dir, _wait_done(stage_dir, cfg.rank_wait_s))
        else:
            t0 = time.time()
            print(f"\n[pipeline] ===== {stage.name} =====", flush=True)
            progress.start(stage.name, **_stage_units(cfg, stage.name, stage_dir))
            new = stage.run(cfg, artefacts)
            seconds = time.time() - t0
            progress.finish(stage.name, seconds)
            if main_rank:
                _mark_done(stage_dir, seconds, **new)
            infos.append(_info(stage.name, stage_dir, seconds, "done"))
        artefacts.update(new)
        if "model" in new:
            models[stage.name] = new["model"]
    return models, artefacts, infos


HELDOUT_TASKS = {"chat_nll": "heldout_sft", "preference": "heldout_dpo"}  # task -> the artefact it scores


def _eval_plan(cfg: PipelineConfig, models: dict, artefacts: dict) -> dict[str, tuple[list[str], dict]]:
    """label -> (the tasks it is scored on, their data files)."""
    from posttrain.evaluation.tasks import get_task

    data = dict(cfg.eval.data)
    for spec in cfg.eval.tasks:
        name = get_task(spec).name
        base = name.split(":", 1)[0]
        if name not in data and base in HELDOUT_TASKS and artefacts.get(HELDOUT_TASKS[base]):
            data[name] = artefacts[HELDOUT_TASKS[base]]
    plan = {}
    for label in cfg.eval.models:
        if label in models:
            tasks = [t for t in cfg.eval.tasks if label in cfg.eval.task_models.get(get_task(t).name, [label])]
            plan[label] = (tasks, data)
    return plan


def _eval_units(cfg: PipelineConfig, out: Path, plan: dict[str, tuple[list[str], dict]]) -> dict:
    """Progress of evaluation: result rows written of the samples `_eval_plan` asks for (when every
    task has a limit; a task reading all of its data has no known size before it loads)."""
    from posttrain.evaluation.tasks import get_task

    sizes = [cfg.eval.task_limits.get(get_task(t).name, cfg.eval.limit) for tasks, _ in plan.values() for t in tasks]
    if not sizes or None in sizes:
        return {}

    def done() -> float:
        return sum(sum(1 for _ in p.open(encoding="utf-8")) for p in (out / "eval").glob("*/*.jsonl"))

    return {"done": done, "total": sum(sizes), "unit": "sample"}


def run_evals(cfg: PipelineConfig, out: Path, models: dict, infos: list[StageInfo], artefacts: dict | None = None
              ) -> dict:
    from posttrain.evaluation.compare import generation_stats, implicit_reward_stats, stage_stats
    from posttrain.evaluation.runner import evaluate
    from posttrain.evaluation.tasks import get_task

    evals: dict[str, dict[str, float]] = {}
    t0 = time.time()
    for label, (tasks, data) in _eval_plan(cfg, models, artefacts or {}).items():
        print(f"\n[pipeline] ===== eval: {label} ({models[label]}) =====", flush=True)
        names = [get_task(t).name for t in tasks]
        limits = {n: cfg.eval.task_limits.get(n, cfg.eval.limit) for n in names}
        budgets = {n: cfg.eval.task_max_new_tokens.get(n, cfg.eval.max_new_tokens) for n in names}
        summary = evaluate(models[label], None, tasks, limits, out / "eval" / label,
                           batch_size=cfg.eval.batch_size, max_new_tokens=budgets,
                           data_paths=data, chat_template=cfg.chat_template, seed=cfg.seed or 0, progress=False)
        evals[label] = {f"{task}/{m}": v for task, res in summary["tasks"].items()
                        for m, v in res["metrics"].items() if isinstance(v, (int, float))}
    (out / "eval" / "table.json").write_text(json.dumps(evals, indent=2))
    dirs = {label: out / "eval" / label for label in evals}
    stats = stage_stats(dirs)  # intervals, paired deltas
    stats["generation"] = generation_stats(dirs)  # response lengths, finish reasons
    stats["implicit_reward"] = implicit_reward_stats(dirs)  # DPO's held-out reward accuracy
    (out / "eval" / "stats.json").write_text(json.dumps(stats, indent=2))
    infos.append(_info("eval", out / "eval", time.time() - t0, "done"))
    return evals


def _write_report(out: Path, cfg: PipelineConfig, infos: list[StageInfo], evals: dict,
                  total_s: float | None = None) -> None:
    from posttrain.report import ReportInputs

    decontam, stats = out / "decontaminate" / "report.md", out / "eval" / "stats.json"
    inputs = ReportInputs(
        title=cfg.name, stages=infos, evals=evals,
        decontam_md=decontam.read_text() if decontam.is_file() else None,
        notes=[f"base model: {cfg.base_model}", f"run directory: {out}"]
        + ([f"seed: {cfg.seed}"] if cfg.seed is not None else [])
        + ([f"total wall time: {total_s:.0f} s ({total_s / 60:.1f} min)"] if total_s else []),
        stats=json.loads(stats.read_text()) if stats.is_file() else None,
        targets=dict(cfg.eval.targets), examples=cfg.eval.examples, eval_dir=out / "eval",
        prefs_stats=_json(out / "prefs" / "stats.json"), synth_stats=_json(out / "synth" / "stats.json"))
    md, html = write_report(out, inputs)
    print(f"[pipeline] report: {md} and {html}", flush=True)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _info(stage: str, stage_dir: Path, seconds: float | None, status: str) -> StageInfo:
    cfg_path = stage_dir / "config.yaml"
    return StageInfo(stage, stage_dir, seconds, status, cfg_path.read_text() if cfg_path.is_file() else "")


main = run_pipeline  # `posttrain run RECIPE.yaml`


DEMO_RECIPE = REPO / "recipes" / "demo.yaml"
DEMO_FULL_RECIPE = REPO / "recipes" / "demo-full.yaml"  # `posttrain demo --full`: the data loop too


def demo(cfg: PipelineConfig) -> Path:
    """`posttrain demo [--full] [key=value ...]`: recipes/demo.yaml (or demo-full.yaml) on the embedded model."""
    return run_pipeline(cfg)


CLI_STAGES = ("run", "demo")


def cli(argv: list[str], stage: str) -> int:
    full = stage == "demo" and "--full" in argv
    argv = [a for a in argv if not (full and a == "--full")]
    path, overrides, want_help = parse_argv(argv, PipelineConfig)
    if want_help:
        print("\n".join(describe(PipelineConfig)))
        return 0
    if stage == "demo":
        if path is not None:
            raise ValueError("posttrain demo takes key=value overrides only; use `posttrain run RECIPE.yaml`")
        path = str(DEMO_FULL_RECIPE if full else DEMO_RECIPE)
    if path is None:
        raise ValueError("usage: posttrain run RECIPE.yaml [key=value ...]")
    cfg = load_config(PipelineConfig, path, overrides)
    if not cfg.recipe_dir:
        cfg.recipe_dir = str(Path(path).resolve().parent)
    run_pipeline(cfg)
    return 0
