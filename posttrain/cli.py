"""`posttrain <stage> [config.yaml] [key=value ...]`: parse the config, call the stage's recipe."""

from __future__ import annotations

import importlib
import os
import sys

from posttrain.config import ConfigError, describe, load_config

# stage -> (module, config class, entry function, one-line help). Imported lazily so that
# `posttrain --help` stays fast.
STAGES: dict[str, tuple[str, str, str, str]] = {
    "sft": ("posttrain.recipes.sft", "SFTConfig", "main", "supervised fine-tuning"),
}


def register(stage: str, module: str, config_cls: str, entry: str, help_text: str) -> None:
    STAGES[stage] = (module, config_cls, entry, help_text)


def _optional_stages() -> None:
    """Stages whose recipe modules exist in this install."""
    extra = {
        "dpo": ("posttrain.recipes.dpo", "DPOConfig", "main", "preference tuning (DPO, dpo_norm, SimPO, IPO)"),
        "rm": ("posttrain.recipes.rm", "RMConfig", "main", "reward model training (Bradley-Terry)"),
        "rlvr": ("posttrain.recipes.rlvr", "RLVRConfig", "main", "RL with verifiable rewards (GRPO, PPO)"),
        "eval": ("posttrain.recipes.eval", "EvalConfig", "main", "evaluate a model on GSM8K, MATH, IFEval"),
        "decontaminate": ("posttrain.data.decontam", "DecontamConfig", "run_decontaminate",
                          "n-gram decontamination of training prompts against eval sets"),
        "mixture": ("posttrain.data.mixture", "MixtureConfig", "build_mixture", "build a data mixture"),
        "serve": ("posttrain.rollout.server", "ServeConfig", "main", "OpenAI-compatible server over a checkpoint"),
        "synth": ("posttrain.data.synth", "SynthConfig", "main", "persona-driven synthetic prompts and responses"),
        "prefs": ("posttrain.data.prefs", "PrefsConfig", "main", "on-policy preference data with an LLM judge"),
        "run": ("posttrain.recipes.pipeline", "PipelineConfig", "main", "run a whole pipeline recipe"),
        "demo": ("posttrain.recipes.pipeline", "PipelineConfig", "demo", "the full pipeline on the embedded model"),
    }
    for stage, spec in extra.items():
        if stage in STAGES:
            continue
        if importlib.util.find_spec(spec[0]) is not None:
            STAGES[stage] = spec


def usage() -> str:
    _optional_stages()
    lines = ["usage: posttrain <stage> [config.yaml] [key=value ...] [--help-config]", "", "stages:"]
    lines += [f"  {name:<14} {spec[3]}" for name, spec in STAGES.items()]
    lines += ["", "Every stage prints and saves its resolved config. `posttrain <stage> --help-config`",
              "lists the valid keys with their defaults."]
    return "\n".join(lines)


def split_args(args: list[str]) -> tuple[str | None, list[str], list[str]]:
    """-> (config path or None, key=value overrides, flags)."""
    path, overrides, flags = None, [], []
    for a in args:
        if a.startswith("--"):
            flags.append(a)
        elif "=" in a:
            overrides.append(a)
        elif path is None:
            path = a
        else:
            raise ConfigError(f"unexpected argument {a!r}: give one config file and key=value overrides")
    return path, overrides, flags


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _optional_stages()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"posttrain: unknown stage {stage!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, cls_name, entry, _ = STAGES[stage]
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    fn = getattr(module, entry)
    custom = getattr(module, "cli", None)
    if custom is not None and stage in getattr(module, "CLI_STAGES", (stage,)):
        # Stages with their own flags (eval's --model/--tasks) parse argv themselves.
        return _guard(stage, lambda: custom(rest, stage))
    try:
        path, overrides, flags = split_args(rest)
        if "--help-config" in flags or "-h" in rest or "--help" in flags:
            print(f"posttrain {stage}: config keys\n")
            print("\n".join(describe(cls)))
            return 0
        cfg = load_config(cls, path, overrides)
    except (ConfigError, ValueError) as e:
        print(f"posttrain {stage}: error: {e}", file=sys.stderr)
        return 2
    return _guard(stage, lambda: fn(cfg))


# Stages whose re-run resumes by itself (cached calls, finished samples or stages are skipped).
RESUME_HINT = {stage: "re-run the same command to continue" for stage in ("eval", "synth", "prefs", "run", "demo",
                                                                          "decontaminate")}


def _guard(stage: str, call) -> int:
    debug = os.environ.get("POSTTRAIN_DEBUG")
    try:
        result = call()
    except KeyboardInterrupt:
        how = RESUME_HINT.get(stage, "re-run with run.resume=true to continue")
        print(f"\nposttrain {stage}: interrupted; {how}", file=sys.stderr)
        return 130
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as e:
        if debug:
            raise
        print(f"posttrain {stage}: error: {e}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
