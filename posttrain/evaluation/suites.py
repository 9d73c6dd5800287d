"""Named task lists: Tülu 3's development and unseen suites (paper §7, Tables 2 and 23-24;
EVAL_SPEC.md §0), each task in the setting Tülu 3 reports.

`posttrain eval --suite tulu3-dev` runs every task of a suite; a task whose data is not on this
machine (no offline copy installed, no `--data NAME=PATH`) is skipped with a line saying how to
provide it, so a suite runs offline with whatever data is here. Tülu 3 reports full MATH (5,000
problems, `math`, loaded from `hf:` or a file); the suite runs MATH-500, the subset that ships
offline in `../shared/data`, and `math` can be added by name.
"""

from __future__ import annotations

SUITES: dict[str, tuple[str, ...]] = {
    "tulu3-dev": ("mmlu", "mmlu:mc", "popqa", "truthfulqa", "bbh", "drop", "math500", "gsm8k", "humaneval",
                  "humanevalplus", "ifeval", "alpaca_eval", "xstest"),
    "tulu3-unseen": ("mmlu_pro", "gpqa", "agieval", "ifbench", "dm_math", "bigcodebench"),
    "quick": ("gsm8k", "math500", "ifeval"),
}


def suite_tasks(name: str) -> list[str]:
    key = name.strip().lower()
    if key not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known suites: {', '.join(SUITES)}")
    return list(SUITES[key])
