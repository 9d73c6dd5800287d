"""Rewards of RLVR rollouts: verifier score × value, a truncation penalty, an optional RM score,
DAPO's soft overlong penalty.

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
from posttrain.evaluation.tasks.verifiers import VerifierOptions, verify_many


def verifier_scores(texts: Sequence[str], rows: Sequence[RLVRRow], options: VerifierOptions | None = None) -> Tensor:
    """[N] float32 verifier scores in [0, 1], one per (response, row); `options` per verifier name
    (e.g. {"code": {"mode": "all_pass"}}). Code rows run together in the sandbox's pool."""
    if len(texts) != len(rows):
        raise ValueError(f"verifier_scores: {len(texts)} responses but {len(rows)} rows")
    scores = verify_many(texts, [r.dataset for r in rows], [r.ground_truth for r in rows], options)
    return torch.tensor(scores, dtype=torch.float32)


def overlong_penalty(lengths: Tensor, max_new_tokens: int, buffer: int, penalty: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476), added to the reward:
    0 up to L − buffer tokens, then falling linearly to −penalty at the limit L = max_new_tokens,

        R(|y|) = −penalty · clip((|y| − (L − buffer)) / buffer, 0, 1)

    (a response cannot be longer than L: generation stops there). buffer 0: no penalty."""
    lengths = lengths.float()
    if buffer <= 0:
        return torch.zeros_like(lengths)
    if buffer >= max_new_tokens:
        raise ValueError(f"overlong_penalty: buffer={buffer} must be less than max_new_tokens={max_new_tokens}")
    over = (lengths - (max_new_tokens - buffer)) / buffer
    return -penalty * over.clamp(0.0, 1.0)


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
