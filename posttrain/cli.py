"""`posttrain <stage> [config.yaml] [key=value ...]`: parse the config, call the stage's recipe."""

from __future__ import annotations

import os
import sys

from posttrain.config import ConfigError, describe, load_config, parse_argv
from posttrain.stages import resolve, stages
# Re-exported: `posttrain.cli.STAGES` and `register` were the registry before #15.
from posttrain.stages import STAGES, register  # noqa: F401


def usage() -> str:
    lines = ["usage: posttrain <stage> [config.yaml] [key=value ...] [--key value ...] [--help-config]", "", "stages:"]
    lines += [f"  {name:<14} {spec.help}" for name, spec in stages().items()]
    lines += ["", "Every stage prints and saves its resolved config. `posttrain <stage> --help-config`",
              "lists the valid keys with their defaults."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage == "eval" and rest[:1] == ["compare"]:
        stage, rest = "compare", rest[1:]
    if stage not in stages():
        print(f"posttrain: unknown stage {stage!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, cls, fn = resolve(stage)
    custom = getattr(module, "cli", None)
    if custom is not None and stage in getattr(module, "CLI_STAGES", ()):
        # The pipeline's stages give the positional argument its own meaning (RUN_DIR, a recipe).
        return _guard(stage, lambda: custom(rest, stage))
    try:
        path, overrides, want_help = parse_argv(rest, cls, getattr(module, "FLAG_ALIASES", None))
        if want_help:
            print(f"usage: posttrain {stage} [config.yaml] [key=value ...] [--key value ...]\n")
            print(f"posttrain {stage}: config keys (each also a --flag, dashes for underscores)\n")
            print("\n".join(describe(cls)))
            return 0
        cfg = load_config(cls, path, overrides)
    except (ConfigError, ValueError) as e:
        print(f"posttrain {stage}: error: {e}", file=sys.stderr)
        return 2
    return _guard(stage, lambda: fn(cfg))


# Stages whose re-run resumes by itself (cached calls, finished samples or stages are skipped).
RESUME_HINT = {stage: "re-run the same command to continue" for stage in ("eval", "synth", "prefs", "run", "demo",
                                                                          "decontaminate", "report")}


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
