"""The RL algorithms `posttrain rlvr` runs, one row each: a baseline (advantage function) and how
the policy loss is formed and reduced. `algorithm` in the config picks a row once; the losses and
advantages themselves are the pure functions of `losses/` and `rl/advantages.py`.

| algorithm    | advantage                                   | ratio    | loss normaliser (per optimizer step) |
|--------------|---------------------------------------------|----------|--------------------------------------|
| grpo         | r − group mean, ÷ group std                 | token    | trained tokens                       |
| dr_grpo      | r − group mean                              | token    | sequences × rollout.max_new_tokens   |
| dapo         | as grpo, + dynamic sampling                 | token    | trained tokens                       |
| gspo         | as grpo                                     | sequence | sequences                            |
| rloo         | r − mean of the other k − 1                 | token    | trained tokens                       |
| reinforce_pp | returns of −β·KL_t + r, normalised per batch| token    | trained tokens                       |
| ppo          | GAE on a value model, whitened              | token    | trained tokens                       |

docs/RL_ALGORITHMS.md says what each one is and which paper it comes from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Literal

from torch import Tensor

from posttrain.losses.pg import GroupAdvantages, grpo_advantages
from posttrain.rl.advantages import dr_grpo_advantages, rloo_advantages
from posttrain.rl.update import PolicyLoss

GroupAdvantageFn = Callable[[Tensor, int, bool], GroupAdvantages]  # (rewards, group size, ÷ std)


@dataclass(frozen=True)
class AlgorithmSpec:
    baseline: Literal["group", "returns", "value"]  # group: per-sample group advantages; returns / value: per token
    advantages: GroupAdvantageFn | None = None  # group baselines only
    ratio: Literal["token", "sequence"] = "token"
    normaliser: Literal["tokens", "constant", "sequences"] = "tokens"
    dynamic_sampling: bool = False  # always on (otherwise rollout.dynamic_sampling turns it on)
    reads_std: bool = False  # train.normalize_adv_std applies


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "grpo": AlgorithmSpec("group", grpo_advantages, reads_std=True),
    "dr_grpo": AlgorithmSpec("group", lambda r, k, _std: dr_grpo_advantages(r, k), normaliser="constant"),
    "dapo": AlgorithmSpec("group", grpo_advantages, dynamic_sampling=True, reads_std=True),
    "gspo": AlgorithmSpec("group", grpo_advantages, ratio="sequence", normaliser="sequences", reads_std=True),
    "rloo": AlgorithmSpec("group", lambda r, k, _std: rloo_advantages(r, k)),
    "reinforce_pp": AlgorithmSpec("returns"),
    "ppo": AlgorithmSpec("value"),
}
AlgorithmName = Literal["grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp", "ppo"]
KL_IN_REWARD = ("ppo", "reinforce_pp")  # algorithms with per-token returns


def group_advantages(cfg) -> Callable[[Tensor, int], GroupAdvantages]:
    """The run's group-baseline advantage function, (rewards, group size) -> GroupAdvantages."""
    fn = ALGORITHMS[cfg.algorithm].advantages
    if fn is None:
        raise ValueError(f"algorithm={cfg.algorithm} has no group baseline")
    std = cfg.train.normalize_adv_std
    return lambda rewards, k: fn(rewards, k, std)


def policy_loss(cfg) -> PolicyLoss:
    """The policy loss of an RLVR config (`rl.config.RLVRConfig`)."""
    spec = ALGORITHMS[cfg.algorithm]
    return PolicyLoss(cfg.train.eps_low, cfg.train.eps_high, cfg.train.tis_cap, cfg.kl.loss_beta, cfg.kl.estimator,
                      cfg.rollout.temperature, ratio=spec.ratio, normaliser=spec.normaliser,
                      constant_length=cfg.rollout.max_new_tokens)


def uses_dynamic_sampling(algorithm: str, requested: bool) -> bool:
    return ALGORITHMS[algorithm].dynamic_sampling or requested


def _changed(section, default) -> list[str]:
    return [f.name for f in dataclasses.fields(section) if getattr(section, f.name) != getattr(default, f.name)]


def check_algorithm(cfg, ppo_defaults) -> None:
    """Raise ValueError, naming the key, for settings the chosen algorithm cannot honour."""
    a, spec = cfg.algorithm, ALGORITHMS[cfg.algorithm]
    if spec.baseline == "group" and cfg.rollout.samples_per_prompt < 2:
        raise ValueError(f"algorithm={a} needs rollout.samples_per_prompt >= 2 (the group baseline)")
    if cfg.kl.placement == "reward" and a not in KL_IN_REWARD:
        raise ValueError(f"kl.placement=reward needs per-token returns (algorithm=ppo or reinforce_pp); "
                         f"algorithm={a} uses kl.placement=loss")
    if spec.ratio == "sequence" and cfg.train.tis_cap is not None:
        raise ValueError(f"algorithm={a} uses one importance ratio per sequence; train.tis_cap (a per-token "
                         f"truncated IS weight) does not fit it: set train.tis_cap=null")
    if a != "ppo":
        changed = _changed(cfg.ppo, ppo_defaults)
        if changed:
            raise ValueError(f"ppo.{changed[0]} is set, but algorithm={a} trains no value model "
                             f"(the ppo.* keys are for algorithm=ppo)")
    if not cfg.train.normalize_adv_std and not spec.reads_std:
        readers = ", ".join(n for n, s in ALGORITHMS.items() if s.reads_std)
        raise ValueError(f"train.normalize_adv_std=false applies to {readers}; algorithm={a} does not divide "
                         f"by the group std anyway")
    if spec.baseline != "group":
        for key, on in (("train.filter_constant_groups=false", not cfg.train.filter_constant_groups),
                        ("rollout.dynamic_sampling=true", cfg.rollout.dynamic_sampling)):
            if on:
                raise ValueError(f"{key} is about groups of equal rewards, which algorithm={a} keeps "
                                 f"(its baseline is not the group's)")
    buffer = cfg.reward.overlong.buffer
    if buffer >= cfg.rollout.max_new_tokens:
        raise ValueError(f"reward.overlong.buffer={buffer} must be less than rollout.max_new_tokens="
                         f"{cfg.rollout.max_new_tokens} (the penalty window ends at the limit)")
