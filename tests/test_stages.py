"""The stage registry: every stage resolves, and the CLI and the pipeline share it without importing
each other."""

import ast
import dataclasses
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env
from posttrain.config import ConfigError, load_config, parse_argv
from posttrain.stages import OPTIONAL, STAGES, resolve, stages


def test_every_registered_stage_resolves():
    registry = stages()
    # This checkout ships every optional module, so nothing may silently drop out of the CLI.
    assert set(OPTIONAL) <= set(registry)
    for name, spec in registry.items():
        module, cls, fn = resolve(name)
        assert module.__name__ == spec.module, name
        assert dataclasses.is_dataclass(cls) and cls.__name__ == spec.config_cls, name
        assert callable(fn), name
        assert spec.help, name


def test_curation_stages_live_in_the_curation_package():
    registry = stages()
    for name in ("decontaminate", "synth", "prefs"):
        assert registry[name].module.startswith("posttrain.curation."), name


def _imported_modules(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_cli_and_pipeline_do_not_import_each_other():
    cli = _imported_modules(REPO / "posttrain" / "cli.py")
    pipeline = _imported_modules(REPO / "posttrain" / "recipes" / "pipeline.py")
    assert not any(n.startswith("posttrain.recipes.pipeline") or n == "posttrain.recipes" for n in cli), cli
    assert not any(n.startswith("posttrain.cli") for n in pipeline), pipeline
    # and at run time: importing either leaves the other unloaded
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(int(sys.argv[2] in sys.modules))")
    for first, other in (("posttrain.cli", "posttrain.recipes.pipeline"),
                         ("posttrain.recipes.pipeline", "posttrain.cli")):
        r = subprocess.run([sys.executable, "-c", code, first, other], env=subprocess_env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip() == "0", f"importing {first} loaded {other}"


def test_cli_still_exposes_the_registry():
    from posttrain import cli

    assert cli.STAGES is STAGES


def test_parse_argv_maps_every_flag_to_its_config_key():
    from posttrain.recipes.eval import FLAG_ALIASES, EvalConfig
    from posttrain.recipes.sft import SFTConfig

    assert parse_argv(["cfg.yaml", "a=1", "b.c=[x,y]"], SFTConfig) == ("cfg.yaml", ["a=1", "b.c=[x,y]"], False)
    assert parse_argv(["x.yaml", "--help-config"], SFTConfig)[2] is True
    # sections with dots, dashes for underscores, --k=v and --k v, bools with and without a value
    path, ov, _ = parse_argv(["--optim.lr=1e-4", "--train.max-steps", "3", "--run.resume",
                              "--no-run.progress", "--run.progress=false"], SFTConfig)
    assert (path, ov) == (None, ["optim.lr=1e-4", "train.max_steps=3", "run.resume=true", "run.progress=false",
                                 "run.progress=false"])
    cfg = load_config(SFTConfig, None, ov + ["data.paths=[x.jsonl]"])
    assert (cfg.optim.lr, cfg.train.max_steps, cfg.run.resume, cfg.run.progress) == (1e-4, 3, True, False)
    # mappings take NAME=VALUE; aliases; the eval spellings of #13 still work
    _, ov, _ = parse_argv(["--data", "gsm8k=/x.jsonl", "--out", "o", "--no-progress", "--overwrite",
                           "--tasks", "gsm8k,ifeval"], EvalConfig, FLAG_ALIASES)
    assert ov == ["data.gsm8k=/x.jsonl", "output_dir=o", "progress=false", "overwrite=true", "tasks=gsm8k,ifeval"]
    with pytest.raises(ConfigError, match=r"unknown flag --optim.bogus; valid under optim: .*--lr"):
        parse_argv(["--optim.bogus", "1"], SFTConfig)
    with pytest.raises(ConfigError, match=r"unknown flag --nope; valid: .*--train"):
        parse_argv(["--nope"], SFTConfig)
    with pytest.raises(ConfigError, match="needs a value"):
        parse_argv(["--optim.lr"], SFTConfig)
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_argv(["--data", "gsm8k"], EvalConfig)
    with pytest.raises(ValueError, match="unexpected argument"):
        parse_argv(["one.yaml", "two.yaml"], SFTConfig)


def test_every_stage_takes_flags_on_the_command_line(capsys):
    from posttrain.cli import main

    assert main(["sft", "--nonsense-flag", "1"]) == 2
    assert "unknown flag --nonsense-flag" in capsys.readouterr().err
    assert main(["eval", "--help"]) == 0 and "--key value" in capsys.readouterr().out

