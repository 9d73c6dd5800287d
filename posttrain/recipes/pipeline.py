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

from posttrain.config import describe, dump_config, field, load_config, parse_argv
from posttrain.report import StageInfo, write_report
from posttrain.stages import resolve

REPO = Path(__file__).resolve().parents[2]

@dataclasses.dataclass
class StageSpec:
    enabled: bool = field(True, "run this stage")
    config: str | None = field(None, "the stage's own YAML config (relative to the recipe file)")
    overrides: list[str] = field([], "key=value overrides for the stage config")


@dataclasses.dataclass
class EvalSpec:
    enabled: bool = field(True, "evaluate the models of the run")
    tasks: list[str] = field(["gsm8k", "math500", "ifeval"], "eval tasks")
    limit: int | None = field(None, "first N samples of each task (None = all)")
    data: dict[str, str] = field({}, "task -> data file (required for `verifiable`: held-out RLVR rows)")
    max_new_tokens: int | None = field(None, "override every task's generation budget")
    batch_size: int = field(32, "sequences decoded together")
    models: list[str] = field(["base", "sft", "dpo", "rlvr"], "which stages' models to evaluate")


@dataclasses.dataclass
class PipelineConfig:
    name: str = field("posttrain pipeline", "title of the report")
    output_dir: str = field("runs/pipeline", "run directory holding every stage")
    base_model: str = field("smollm2-135m", "the model the pipeline starts from (any checkpoint)")
    chat_template: str = field("model", "chat template for every stage: model, tulu, or a Jinja string")
    stages: list[str] = field([], "run only these stages (default: every enabled one)")
    decontaminate: StageSpec = field(StageSpec(), "n-gram decontamination of the SFT prompts")
    sft: StageSpec = field(StageSpec(), "supervised fine-tuning")
    prefs: StageSpec = field(StageSpec(enabled=False), "on-policy preference data from the SFT model")
    dpo: StageSpec = field(StageSpec(), "preference tuning")
    rlvr: StageSpec = field(StageSpec(), "RL with verifiable rewards")
    eval: EvalSpec = field(EvalSpec(), "evaluation of base and stage models")
    recipe_dir: str = field("", "directory stage config paths are relative to (set from the recipe file)")
    rank_wait_s: float = field(86400.0, "under torchrun: how long ranks > 0 wait for rank 0's single-process stages")


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


def _dir(cfg: PipelineConfig, stage: str) -> Path:
    return Path(cfg.output_dir) / stage


def _decontaminate(cfg: PipelineConfig, artefacts: dict) -> dict:
    stage_dir = _dir(cfg, "decontaminate")
    # What gets cleaned is the SFT stage's own data, unless the decontam config names training sets.
    sft_cfg, _ = _stage_config(cfg, "sft", [])
    train = {f"sft{i}": p for i, p in enumerate(sft_cfg.data.paths)}
    dcfg, fn = _stage_config(cfg, "decontaminate", [f"out_dir={stage_dir}"])
    dcfg.train = dcfg.train or train
    fn(dcfg)
    filtered = stage_dir / "filtered"
    return {"sft_data": [str(filtered / f"{n}.jsonl") for n in train
                         if (filtered / f"{n}.jsonl").is_file() and n in dcfg.train]}


def _prefs(cfg: PipelineConfig, artefacts: dict) -> dict:
    stage_dir = _dir(cfg, "prefs")
    pcfg, fn = _stage_config(cfg, "prefs", [f"out_dir={stage_dir}"])
    if not pcfg.policy.base_url:  # on-policy: the responses come from the model SFT just made
        pcfg.policy.checkpoint, pcfg.policy.chat_template = artefacts["model"], cfg.chat_template
    fn(pcfg)
    pairs = stage_dir / "preferences.jsonl"
    return {"dpo_data": [str(pairs)] if pairs.is_file() and pairs.stat().st_size else []}


def _trainer(stage: str, data: str | None) -> Callable[[PipelineConfig, dict], dict]:
    """Run function of a training stage: it starts from the newest model and trains on the `data`
    artefact when an earlier stage produced one, else on its own config's data."""

    def run(cfg: PipelineConfig, artefacts: dict) -> dict:
        stage_dir = _dir(cfg, stage)
        overrides = [f"model.name_or_path={artefacts['model']}", f"model.chat_template={cfg.chat_template}",
                     f"run.output_dir={stage_dir}", f"run.resume={str(stage_dir.exists()).lower()}"]
        if data and artefacts.get(data):
            overrides.append("data.paths=[" + ",".join(artefacts[data]) + "]")
        scfg, fn = _stage_config(cfg, stage, overrides)
        fn(scfg)
        if _rank() != 0:  # rank 0 writes the final model after the others are done
            _wait_done(stage_dir, cfg.rank_wait_s)
        return {"model": _final_model(stage_dir)}

    return run


STAGE_TABLE = (
    Stage("decontaminate", _decontaminate, ("sft_data",)),
    Stage("sft", _trainer("sft", "sft_data"), ("model",), every_rank=True),
    Stage("prefs", _prefs, ("dpo_data",)),
    Stage("dpo", _trainer("dpo", "dpo_data"), ("model",), every_rank=True),
    Stage("rlvr", _trainer("rlvr", None), ("model",), every_rank=True),
)
# Evaluation is no table row: it leaves no DONE.json (it resumes sample by sample itself), needs
# every stage's model, and runs on rank 0 after the rest.
ORDER = tuple(s.name for s in STAGE_TABLE) + ("eval",)
TRAIN_STAGES = tuple(s.name for s in STAGE_TABLE if s.every_rank)


def _from_done(stage: Stage, stage_dir: Path, done: dict, selected: bool = True) -> dict:
    """The artefacts a finished stage hands on. Its model always counts (`stages=[dpo]` continues
    from the finished SFT model); its data only when the stage is selected, so that leaving a stage
    out also leaves out the data it made."""
    new = {k: done[k] for k in stage.produces if k in done and k != "model"} if selected else {}
    if "model" in stage.produces:
        # Found where it lies rather than read from DONE.json: the run directory may have moved,
        # and DONE.json files written before #15 do not name it.
        new["model"] = _final_model(stage_dir)
    return new


def run_pipeline(cfg: PipelineConfig) -> Path:
    from posttrain.train.dist import keep_process_group

    with keep_process_group():  # under torchrun: one process group for every training stage
        return _run_pipeline(cfg)


def _run_pipeline(cfg: PipelineConfig) -> Path:
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
            new = _from_done(stage, stage_dir, done)
            infos.append(_info(stage.name, stage_dir, done["seconds"], "done (earlier run)"))
        elif not main_rank and not stage.every_rank:  # rank 0 runs it alone
            print(f"\n[pipeline] ===== {stage.name} =====", flush=True)
            new = _from_done(stage, stage_dir, _wait_done(stage_dir, cfg.rank_wait_s))
        else:
            t0 = time.time()
            print(f"\n[pipeline] ===== {stage.name} =====", flush=True)
            new = stage.run(cfg, artefacts)
            seconds = time.time() - t0
            if main_rank:
                _mark_done(stage_dir, seconds, **new)
            infos.append(_info(stage.name, stage_dir, seconds, "done"))
        artefacts.update(new)
        if "model" in new:
            models[stage.name] = new["model"]

    if not main_rank:  # evaluation and the report are rank 0's
        return out
    evals = {}
    if "eval" in wanted:
        evals = run_evals(cfg, out, models, infos)
    _write_report(out, cfg.name, cfg.base_model, infos, evals)
    return out


def run_evals(cfg: PipelineConfig, out: Path, models: dict, infos: list[StageInfo]) -> dict:
    from posttrain.evaluation.compare import stage_stats
    from posttrain.evaluation.runner import evaluate

    evals: dict[str, dict[str, float]] = {}
    t0 = time.time()
    for label in cfg.eval.models:
        if label not in models:
            continue
        print(f"\n[pipeline] ===== eval: {label} ({models[label]}) =====", flush=True)
        summary = evaluate(models[label], None, cfg.eval.tasks, cfg.eval.limit, out / "eval" / label,
                           batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                           data_paths=cfg.eval.data, chat_template=cfg.chat_template)
        evals[label] = {f"{task}/{m}": v for task, res in summary["tasks"].items()
                        for m, v in res["metrics"].items() if isinstance(v, (int, float))}
    (out / "eval" / "table.json").write_text(json.dumps(evals, indent=2))
    stats = stage_stats({label: out / "eval" / label for label in evals})  # intervals, paired deltas
    (out / "eval" / "stats.json").write_text(json.dumps(stats, indent=2))
    infos.append(_info("eval", out / "eval", time.time() - t0, "done"))
    return evals


def _write_report(out: Path, title: str, base_model: str, infos: list[StageInfo], evals: dict) -> None:
    decontam, stats = out / "decontaminate" / "report.md", out / "eval" / "stats.json"
    md, html = write_report(out, title, infos, evals, decontam.read_text() if decontam.is_file() else None,
                            notes=[f"base model: {base_model}", f"run directory: {out}"],
                            stats=json.loads(stats.read_text()) if stats.is_file() else None)
    print(f"[pipeline] report: {md} and {html}", flush=True)


def _info(stage: str, stage_dir: Path, seconds: float | None, status: str) -> StageInfo:
    cfg_path = stage_dir / "config.yaml"
    return StageInfo(stage, stage_dir, seconds, status, cfg_path.read_text() if cfg_path.is_file() else "")


main = run_pipeline  # `posttrain run RECIPE.yaml`


DEMO_RECIPE = REPO / "recipes" / "demo.yaml"


def demo(cfg: PipelineConfig) -> Path:
    """`posttrain demo [key=value ...]`: recipes/demo.yaml on the embedded model."""
    return run_pipeline(cfg)


CLI_STAGES = ("run", "demo")


def cli(argv: list[str], stage: str) -> int:
    path, overrides, want_help = parse_argv(argv, PipelineConfig)
    if want_help:
        print("\n".join(describe(PipelineConfig)))
        return 0
    if stage == "demo":
        if path is not None:
            raise ValueError("posttrain demo takes key=value overrides only; use `posttrain run RECIPE.yaml`")
        path = str(DEMO_RECIPE)
    if path is None:
        raise ValueError("usage: posttrain run RECIPE.yaml [key=value ...]")
    cfg = load_config(PipelineConfig, path, overrides)
    if not cfg.recipe_dir:
        cfg.recipe_dir = str(Path(path).resolve().parent)
    run_pipeline(cfg)
    return 0
