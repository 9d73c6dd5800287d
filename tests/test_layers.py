"""The import rules of ARCHITECTURE.md, checked: a module imports only from its own layer or the
layers listed before it (module-level and function-level imports alike)."""

import ast
from pathlib import Path

from conftest import REPO

# Lowest first; the same table as ARCHITECTURE.md's. The longest matching prefix decides a module's layer.
LAYERS = [
    ("base", ["posttrain.config", "posttrain.models", "posttrain.data.io", "posttrain.progress",
              "posttrain.tracking"]),
    ("tasks", ["posttrain.evaluation.tasks", "posttrain.evaluation.stats", "posttrain.evaluation.sandbox"]),
    ("data", ["posttrain.data"]),
    ("losses", ["posttrain.losses"]),
    ("generation", ["posttrain.generation"]),
    ("training", ["posttrain.train", "posttrain.reward_model"]),
    ("rl", ["posttrain.rl"]),
    ("evaluation", ["posttrain.evaluation"]),
    ("curation", ["posttrain.curation"]),
    ("registry", ["posttrain.stages", "posttrain.report"]),
    ("recipes", ["posttrain.recipes"]),
    ("entry", ["posttrain.cli", "posttrain"]),
]


def layer_of(module: str) -> int:
    best, length = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > length:
                best, length = i, len(p)
    assert best is not None, module
    return best


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def violations() -> list[str]:
    found = []
    for path in sorted((REPO / "posttrain").rglob("*.py")):
        me = layer_of(_module_name(path))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.startswith("posttrain") and layer_of(name) > me:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {LAYERS[me][0]} imports {name} "
                                 f"({LAYERS[layer_of(name)][0]})")
    return found


def test_no_module_imports_a_higher_layer():
    assert violations() == []


def test_the_checker_catches_an_upward_import():
    assert layer_of("posttrain.train.loop") < layer_of("posttrain.recipes.sft")
    assert layer_of("posttrain.evaluation.tasks.gsm8k") < layer_of("posttrain.data.rlvr") < \
        layer_of("posttrain.evaluation.runner")
    assert layer_of("posttrain.data.io") == 0


def test_architecture_lists_every_layer():
    text = (REPO / "ARCHITECTURE.md").read_text()
    for name, prefixes in LAYERS:
        for p in prefixes:
            if p != "posttrain":
                assert "`" + p.removeprefix("posttrain.").replace(".", "/") in text, p
