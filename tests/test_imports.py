"""Every module of the package imports cleanly (no import-time side effects or missing deps)."""

import importlib
import pkgutil

import posttrain


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(posttrain.__path__, "posttrain.")]
    assert len(names) > 10
    for name in names:
        importlib.import_module(name)
