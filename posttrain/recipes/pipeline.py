"""The whole Tülu 3 pipeline in one run directory (`posttrain run recipe.yaml`, `posttrain demo`).

decontaminate -> sft -> (prefs) -> dpo -> rlvr -> eval -> report. Each stage writes into
`<output_dir>/<stage>/`, and its product feeds the next: the decontaminated SFT set trains SFT, the
SFT model starts DPO (and generates on-policy preference data when `prefs` is on), the DPO model
starts RLVR, and every model is evaluated on the same slices. A finished stage leaves `DONE.json`;
re-running the command skips finished stages and resumes an interrupted one from its last
checkpoint (`run.resume=true`).

Under torchrun every rank runs the training stages together (FSDP2); decontamination, preference
data, evaluation and the report run on rank 0 alone, and the other ranks wait for the stage's
`DONE.json` before going on, so a stage always starts from a finished predecessor.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import time
from pathlib import Path

from posttrain.config import field, load_config
from posttrain.report import StageInfo, write_report

REPO = Path(__file__).resolve().parents[2]
TRAIN_STAGES = ("sft", "dpo", "rlvr")


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


ORDER = ("decontaminate", "sft", "prefs", "dpo", "rlvr", "eval")


def _stage_config(stage: str, spec: StageSpec, recipe_dir: Path, extra: list[str]):
    from posttrain.cli import STAGES, _optional_stages

    _optional_stages()
    module_name, cls_name, entry, _ = STAGES[stage]
    module = importlib.import_module(module_name)
    path = None
    if spec.config:
        path = Path(spec.config)
        if not path.is_absolute():
            path = (recipe_dir / path) if (recipe_dir / path).exists() else (REPO / path)
    cfg = load_config(getattr(module, cls_name), path, list(spec.overrides) + extra)
    return cfg, getattr(module, entry)


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


def run_pipeline(cfg: PipelineConfig) -> Path:
    from posttrain.train.dist import keep_process_group

    with keep_process_group():  # under torchrun: one process group for every training stage
        return _run_pipeline(cfg)


def _run_pipeline(cfg: PipelineConfig) -> Path:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe_dir = Path(cfg.recipe_dir or ".")
    main_rank = _rank() == 0
    if main_rank:
        (out / "pipeline.yaml").write_text(_yaml(cfg))
    wanted = [s for s in ORDER if getattr(cfg, s).enabled and (not cfg.stages or s in cfg.stages)]
    unknown = [s for s in cfg.stages if s not in ORDER]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {', '.join(ORDER)}")
    print(f"[pipeline] {cfg.name}: stages {' -> '.join(wanted)}; run directory {out}", flush=True)
    models = {"base": cfg.base_model}
    infos: list[StageInfo] = []
    sft_data_override: list[str] = []
    dpo_data_override: list[str] = []
    for stage in ORDER:
        if stage == "eval":
            break
        stage_dir = out / stage
        if stage in TRAIN_STAGES and _done(stage_dir):
            models[stage] = _final_model(stage_dir)
        if stage not in wanted:
            continue
        done = _done(stage_dir)
        if done:
            print(f"[pipeline] {stage}: finished earlier ({done['seconds']:.0f} s), skipping", flush=True)
            if stage == "decontaminate":
                sft_data_override = done.get("sft_data", [])
            if stage == "prefs":
                dpo_data_override = done.get("dpo_data", [])
            infos.append(_info(stage, stage_dir, done["seconds"], "done (earlier run)"))
            continue
        t0 = time.time()
        print(f"\n[pipeline] ===== {stage} =====", flush=True)
        extra_info = {}
        if not main_rank and stage not in TRAIN_STAGES:  # rank 0 runs it alone
            done = _wait_done(stage_dir, cfg.rank_wait_s)
            sft_data_override = done.get("sft_data", sft_data_override)
            dpo_data_override = done.get("dpo_data", dpo_data_override)
            continue
        if stage == "decontaminate":
            sft_cfg, _ = _stage_config("sft", cfg.sft, recipe_dir, [])
            train = {f"sft{i}": p for i, p in enumerate(sft_cfg.data.paths)}
            dcfg, fn = _stage_config(stage, cfg.decontaminate, recipe_dir, [f"out_dir={stage_dir}"])
            dcfg.train = dcfg.train or train
            fn(dcfg)
            sft_data_override = [str(stage_dir / "filtered" / f"{n}.jsonl") for n in train
                                 if (stage_dir / "filtered" / f"{n}.jsonl").is_file() and n in dcfg.train]
            extra_info["sft_data"] = sft_data_override
        elif stage == "prefs":
            pcfg, fn = _stage_config(stage, cfg.prefs, recipe_dir, [f"output_dir={stage_dir}"])
            result = fn(pcfg)
            extra_info["dpo_data"] = dpo_data_override = [str(result)] if result else []
        else:
            start = {"sft": models["base"], "dpo": models.get("sft", models["base"]),
                     "rlvr": models.get("dpo", models.get("sft", models["base"]))}[stage]
            overrides = [f"model.name_or_path={start}", f"model.chat_template={cfg.chat_template}",
                         f"run.output_dir={stage_dir}", f"run.resume={str(stage_dir.exists()).lower()}"]
            if stage == "sft" and sft_data_override:
                overrides.append("data.paths=[" + ",".join(sft_data_override) + "]")
            if stage == "dpo" and dpo_data_override:
                overrides.append("data.paths=[" + ",".join(dpo_data_override) + "]")
            scfg, fn = _stage_config(stage, getattr(cfg, stage), recipe_dir, overrides)
            fn(scfg)
            if not main_rank:  # rank 0 writes the final model after the others are done
                _wait_done(stage_dir, cfg.rank_wait_s)
            models[stage] = _final_model(stage_dir)
        seconds = time.time() - t0
        if main_rank:
            _mark_done(stage_dir, seconds, **extra_info)
        infos.append(_info(stage, stage_dir, seconds, "done"))

    if not main_rank:  # evaluation and the report are rank 0's
        return out
    evals = {}
    if "eval" in wanted:
        evals = run_evals(cfg, out, models, infos)
    decontam_md = (out / "decontaminate" / "report.md")
    md, html = write_report(out, cfg.name, infos, evals,
                            decontam_md.read_text() if decontam_md.is_file() else None,
                            notes=[f"base model: {cfg.base_model}", f"run directory: {out}"])
    print(f"[pipeline] report: {md} and {html}", flush=True)
    return out


def run_evals(cfg: PipelineConfig, out: Path, models: dict, infos: list[StageInfo]) -> dict:
    from posttrain.recipes.eval import evaluate

    evals: dict[str, dict[str, float]] = {}
    t0 = time.time()
    for label in cfg.eval.models:
        if label not in models:
            continue
        print(f"\n[pipeline] ===== eval: {label} ({models[label]}) =====", flush=True)
        summary = evaluate(models[label], None, cfg.eval.tasks, cfg.eval.limit, out / "eval" / label,
                           batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                           data_paths=cfg.eval.data,
                           chat_template=cfg.chat_template)
        evals[label] = {f"{task}/{m}": v for task, res in summary["tasks"].items()
                        for m, v in res["metrics"].items() if isinstance(v, (int, float))}
    (out / "eval" / "table.json").write_text(json.dumps(evals, indent=2))
    infos.append(_info("eval", out / "eval", time.time() - t0, "done"))
    return evals


def _info(stage: str, stage_dir: Path, seconds: float, status: str) -> StageInfo:
    cfg_path = stage_dir / "config.yaml"
    return StageInfo(stage, stage_dir, seconds, status, cfg_path.read_text() if cfg_path.is_file() else "")


def _yaml(cfg) -> str:
    import yaml

    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def main(cfg: PipelineConfig) -> Path:
    return run_pipeline(cfg)


DEMO_RECIPE = REPO / "recipes" / "demo.yaml"


def demo(cfg: PipelineConfig) -> Path:
    """`posttrain demo [key=value ...]`: recipes/demo.yaml on the embedded model."""
    return run_pipeline(cfg)


CLI_STAGES = ("run", "demo")


def cli(argv: list[str], stage: str) -> int:
    from posttrain.cli import split_args
    from posttrain.config import describe

    path, overrides, flags = split_args(argv)
    if "--help-config" in flags or "--help" in flags:
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
