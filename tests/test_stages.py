"""The stage registry: every stage resolves, and the CLI and the pipeline share it without importing
each other."""

import ast
import dataclasses
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env
from posttrain.stages import OPTIONAL, STAGES, resolve, split_args, stages


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

    assert cli.STAGES is STAGES and cli.split_args is split_args


def test_split_args():
    assert split_args(["cfg.yaml", "a=1", "--help-config", "b.c=[x,y]"]) == \
        ("cfg.yaml", ["a=1", "b.c=[x,y]"], ["--help-config"])
    with pytest.raises(ValueError, match="unexpected argument"):
        split_args(["one.yaml", "two.yaml"])

