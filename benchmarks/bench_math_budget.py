"""Wall time of the MATH verifier on adversarial outputs (docs/EVAL_NOTES.md, issue #14).

    python benchmarks/bench_math_budget.py

Prints the first call of the process (checker start-up included), then each adversarial output
through the RL reward (`verify`) and the eval scorer (`MathScorer.score`) with the checker warm,
then the slowest of 8 concurrent reward calls. Every warm call must end within
`MathScorer.budget_s` plus scheduling noise.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from posttrain.evaluation.tasks.minerva_math import MathScorer
from posttrain.evaluation.tasks.verifiers import verify

TOWER = r"\boxed{9^{9^{9^{9}}}}"
CASES = {
    "tower_9": TOWER,
    "tower_10": r"\boxed{10^{10^{10}}}",
    "tower_2": r"\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    "10!!!!": r"\boxed{10!!!!}",
    "tower_in_dollars": r"\boxed{\$9^{9^{9^{9}}}}",
    "frac_5000": "\\boxed{" + "\\frac{" * 500 + "1" + "}{2}" * 500 + "}",
    "frac_990": "\\boxed{" + "\\frac{" * 99 + "1" + "}{2}" * 99 + "}",
    "two_towers": "Final Answer: The final answer is $9^{9^{9^{9}}}$. I hope it is correct. \\boxed{10^{10^{10}}}",
}


def timed(fn, *args) -> float:
    t = time.monotonic()
    fn(*args)
    return time.monotonic() - t


def main() -> None:
    print(f"first call of the process (tower_9): {timed(verify, TOWER, 'math', '3'):.2f} s")
    scorer = MathScorer()
    print(f"budget_s = {scorer.budget_s}")
    for name, output in CASES.items():
        reward_s = timed(verify, output, "math", "3")
        score_s = timed(scorer.score, output, "3")
        print(f"{name:18s} reward {reward_s:.2f} s  score {score_s:.2f} s")
    with ThreadPoolExecutor(8) as pool:
        times = list(pool.map(lambda o: timed(verify, o, "math", "3"), [TOWER] * 8))
    print(f"8 threads x tower_9: slowest {max(times):.2f} s")


if __name__ == "__main__":
    main()
