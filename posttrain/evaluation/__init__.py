"""Evaluation, in one place: the tasks (`tasks/`, one module each, plus the verifiers RLVR rewards
with), the runner (`runner.py`: prompts -> engine -> scored rows -> metrics), the on-disk results
store (`results.py`) and RLVR's held-out evaluation through the same runner (`heldout.py`).

    from posttrain.evaluation import evaluate
    summary = evaluate("runs/sft/final", tasks=["gsm8k", "ifeval"], limit=50, out_dir="runs/eval/sft")
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy: data/ imports the verifiers under tasks/, and must not pull in the runner (torch, tqdm).
    if name in ("evaluate", "DEFAULT_TASKS"):
        from posttrain.evaluation import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'posttrain.evaluation' has no attribute {name!r}")


__all__ = ["evaluate", "DEFAULT_TASKS"]
