"""`posttrain report RUN_DIR`: report.md and report.html of a pipeline run directory again, from
what its stages left on disk (DONE.json, config.yaml, metrics, the eval table and its statistics,
the decontamination report)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from posttrain.config import describe, field, load_config, parse_argv
from posttrain.recipes.pipeline import STAGE_TABLE, PipelineConfig, _done, _info, _write_report


@dataclasses.dataclass
class ReportConfig:
    run_dir: str = field("", "pipeline run directory (the recipe's output_dir)")
    title: str | None = field(None, "report title (default: the recipe's name, from pipeline.yaml)")


def report(cfg: ReportConfig) -> Path:
    out = Path(cfg.run_dir)
    recipe = out / "pipeline.yaml"
    if not recipe.is_file():
        raise FileNotFoundError(f"{recipe} not found: give the run directory of `posttrain run` (its output_dir)")
    pcfg = load_config(PipelineConfig, recipe, [])
    if cfg.title:
        pcfg.name = cfg.title
    infos = []
    for stage in STAGE_TABLE:
        stage_dir = out / stage.name
        if (done := _done(stage_dir)) is not None:
            infos.append(_info(stage.name, stage_dir, done["seconds"], "done"))
        elif stage_dir.is_dir():
            infos.append(_info(stage.name, stage_dir, None, "not finished"))
    table, timing = out / "eval" / "table.json", _read(out / "timing.json")
    evals = json.loads(table.read_text()) if table.is_file() else {}
    if evals:
        infos.append(_info("eval", out / "eval", timing.get("eval_s"), "done"))
    _write_report(out, pcfg, infos, evals, timing.get("total_s"))
    return out


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


CLI_STAGES = ("report",)


def cli(argv: list[str], stage: str = "report") -> int:
    path, overrides, want_help = parse_argv(argv, ReportConfig)
    if want_help:
        print("usage: posttrain report RUN_DIR [title=...]\n\n" + "\n".join(describe(ReportConfig)))
        return 0
    cfg = load_config(ReportConfig, None, overrides)
    cfg.run_dir = path or cfg.run_dir  # RUN_DIR is a directory, not a config file
    if not cfg.run_dir:
        raise ValueError("usage: posttrain report RUN_DIR [title=...]")
    report(cfg)
    return 0
