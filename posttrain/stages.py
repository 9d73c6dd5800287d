"""The stage registry: `posttrain <stage>` name -> recipe module, config class, entry, help.

Both the CLI and the pipeline resolve stages here, so neither has to import the other. Modules are
named, not imported, so that `posttrain --help` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Callable, NamedTuple



class StageEntry(NamedTuple):
    module: str
    config_cls: str
    entry: str
    help: str


STAGES: dict[str, StageEntry] = {
    "sft": StageEntry("posttrain.recipes.sft", "SFTConfig", "main", "supervised fine-tuning"),
}

# Stages registered only when their module is present in this install (a slimmed-down install may
# leave out RL or serving).
OPTIONAL: dict[str, StageEntry] = {
    "dpo": StageEntry("posttrain.recipes.dpo", "DPOConfig", "main", "preference tuning (DPO, dpo_norm, SimPO, IPO)"),
    "rm": StageEntry("posttrain.recipes.rm", "RMConfig", "main", "reward model training (Bradley-Terry)"),
    "rlvr": StageEntry("posttrain.recipes.rlvr", "RLVRConfig", "main", "RL with verifiable rewards (GRPO, PPO)"),
    "eval": StageEntry("posttrain.recipes.eval", "EvalConfig", "main",
                       "evaluate a model (tasks or a suite); `eval compare A B` compares two runs"),
    "compare": StageEntry("posttrain.evaluation.compare", "CompareConfig", "main",
                          "compare two eval runs: per-task deltas with paired bootstrap intervals"),
    "decontaminate": StageEntry("posttrain.curation.decontam", "DecontamConfig", "run_decontaminate",
                                "n-gram decontamination of training prompts against eval sets"),
    "mixture": StageEntry("posttrain.data.mixture", "MixtureConfig", "build_mixture", "build a data mixture"),
    "serve": StageEntry("posttrain.generation.server", "ServeConfig", "main",
                        "OpenAI-compatible server over a checkpoint"),
    "synth": StageEntry("posttrain.curation.synth", "SynthConfig", "main",
                        "persona-driven synthetic prompts and responses"),
    "prefs": StageEntry("posttrain.curation.onpolicy", "PrefsConfig", "main",
                        "on-policy preference data with an LLM judge"),
    "run": StageEntry("posttrain.recipes.pipeline", "PipelineConfig", "main", "run a whole pipeline recipe"),
    "demo": StageEntry("posttrain.recipes.pipeline", "PipelineConfig", "demo",
                       "the full pipeline on the embedded model"),
    "merge": StageEntry("posttrain.recipes.merge", "MergeConfig", "merge",
                        "fold a LoRA adapter directory into its base: a plain HF directory"),
    "report": StageEntry("posttrain.recipes.report", "ReportConfig", "report",
                         "re-render report.md/report.html of a pipeline run directory"),
}


def register(stage: str, module: str, config_cls: str, entry: str, help_text: str) -> None:
    STAGES[stage] = StageEntry(module, config_cls, entry, help_text)


def stages() -> dict[str, StageEntry]:
    """Every stage available in this install, in registration order."""
    for stage, spec in OPTIONAL.items():
        if stage not in STAGES and importlib.util.find_spec(spec.module) is not None:
            STAGES[stage] = spec
    return STAGES


def resolve(stage: str) -> tuple[ModuleType, type, Callable]:
    """-> (recipe module, config class, entry function) of a registered stage."""
    spec = stages()[stage]
    module = importlib.import_module(spec.module)
    return module, getattr(module, spec.config_cls), getattr(module, spec.entry)
