"""Rewards of RLVR rollouts: verifier score × value, a truncation penalty, an optional RM score.

Tülu 3: 10 when the verifier accepts the answer, 0 otherwise; responses that hit the length limit
without an end token can get a fixed penalty instead (-10 there); a reward model's score can be
added with a weight (0 in the release: the RM only initialised the value model).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
from torch import Tensor

from posttrain.data.rlvr import RLVRRow
from posttrain.evaluation.tasks.verifiers import verify


def verifier_scores(texts: Sequence[str], rows: Sequence[RLVRRow]) -> Tensor:
    """[N] float32 verifier scores in [0, 1], one per (response, row)."""
    if len(texts) != len(rows):
        raise ValueError(f"verifier_scores: {len(texts)} responses but {len(rows)} rows")
    return torch.tensor([verify(t, r.dataset, r.ground_truth) for t, r in zip(texts, rows)], dtype=torch.float32)


def combine_rewards(scores: Tensor, truncated: Tensor, correct_value: float = 10.0,
                    truncated_reward: float | None = None, rm_scores: Tensor | None = None,
                    rm_weight: float = 0.0) -> Tensor:
    """reward = correct_value·score (+ rm_weight·rm_score); a truncated response (length limit
    reached without an end token) gets `truncated_reward` instead when that is set."""
    rewards = correct_value * scores.float()
    if rm_scores is not None:
        rewards = rewards + rm_weight * rm_scores.float()
    if truncated_reward is not None:
        rewards = torch.where(truncated.bool(), torch.full_like(rewards, truncated_reward), rewards)
    return rewards


def accuracy_by_verifier(scores: Tensor, keys: Sequence[str]) -> dict[str, float]:
    """Mean verifier score per verifier name."""
    groups: dict[str, list[float]] = defaultdict(list)
    for s, k in zip(scores.tolist(), keys):
        groups[k].append(s)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


class RewardModelScorer:
    """Scores (prompt, response) conversations with a reward model (`posttrain.reward_model`)."""

    def __init__(self, path: str, dtype: torch.dtype, device, chat_template: str = "model"):
        from posttrain.models import load_tokenizer
        from posttrain.reward_model import load_reward_model

        self.tokenizer = load_tokenizer(path, chat_template)
        self.model = load_reward_model(path, self.tokenizer, dtype=dtype, device=device).eval()
        self.model.requires_grad_(False)

    def __call__(self, rows: Sequence[RLVRRow], texts: Sequence[str]) -> Tensor:
        from posttrain.reward_model import score

        convs = [r.messages + [{"role": "assistant", "content": t}] for r, t in zip(rows, texts)]
        return torch.tensor(score(self.model, self.tokenizer, convs), dtype=torch.float32)
