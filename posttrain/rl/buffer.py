"""The samples one RL step trains on: token sequences plus per-token tensors, packed on demand.

Every per-token quantity (generator/old/reference log-probs, advantages, values, returns, and
the 0/1 "loss_mask" of multi-turn rollouts, 0 on tool output) is kept per sample as a 1-D tensor
over its response tokens. A micro-batch packs a few samples into one
padding-free row (`data.packing.pack`); its response targets come out in sample order, then token
order, which is exactly the order of `cat(name, idx)`, so per-token tensors line up with the
trainer's log-probs without any index bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from posttrain.data.chat import IGNORE_INDEX
from posttrain.data.packing import PackedBatch, pack


@dataclass
class TrainSamples:
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    token: dict[str, list[Tensor]] = field(default_factory=dict)  # name -> per-sample [R_i] tensors

    def __post_init__(self):
        assert len(self.prompt_ids) == len(self.response_ids)
        assert all(len(r) > 0 for r in self.response_ids), "every sample needs at least one response token"

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(p) + len(r) for p, r in zip(self.prompt_ids, self.response_ids)]

    @property
    def response_lengths(self) -> list[int]:
        return [len(r) for r in self.response_ids]

    def trained_tokens(self, i: int) -> int:
        """Response tokens of sample i that the loss sees (all, unless a "loss_mask" is set)."""
        if "loss_mask" in self.token:
            return int(self.token["loss_mask"][i].sum().item())
        return len(self.response_ids[i])

    def set(self, name: str, values: list[Tensor]) -> None:
        if len(values) != len(self) or any(v.shape != (n,) for v, n in zip(values, self.response_lengths)):
            raise ValueError(f"TrainSamples.set({name!r}): expected one [R_i] tensor per sample")
        self.token[name] = [v.detach().float().cpu() for v in values]

    def has(self, name: str) -> bool:
        return name in self.token

    def cat(self, name: str, idx: list[int]) -> Tensor:
        """[sum R_i] for samples `idx`, in packing order."""
        return torch.cat([self.token[name][i] for i in idx])

    def pack(self, idx: list[int]) -> PackedBatch:
        """Samples `idx` in one packed row; targets are the response tokens only."""
        docs = []
        for i in idx:
            p, r = self.prompt_ids[i], self.response_ids[i]
            docs.append((p + r, [IGNORE_INDEX] * len(p) + r))
        return pack(docs)

    def pack_grouped(self, idx: list[int]) -> GroupedRow:
        """Samples `idx` in one row, each run of consecutive samples with the same prompt sharing
        one copy of it (needs the "posttrain_varlen" attention implementation)."""
        return pack_grouped(self, idx)


@dataclass
class GroupedRow:
    """Samples packed with each run of samples that share a prompt laid out [prompt, r_1, ..., r_m]
    (see train/varlen_attn.grouped_attention). The logits at `keep` predict `targets`: the
    responses' tokens in sample then token order; the prompt's last position is kept once per
    response (it predicts each response's first token)."""

    input_ids: Tensor  # [1, N]
    position_ids: Tensor  # [1, N]
    keep: Tensor  # [K]
    targets: Tensor  # [K]
    groups: tuple[tuple[int, int, tuple[int, ...]], ...]  # (start, prompt_len, response lengths)

    def to(self, device) -> "GroupedRow":
        return GroupedRow(self.input_ids.to(device), self.position_ids.to(device), self.keep.to(device),
                          self.targets.to(device), self.groups)


def prompt_runs(prompts: list[list[int]]) -> list[int]:
    """Lengths of the runs of consecutive equal prompts."""
    runs: list[int] = []
    for i, p in enumerate(prompts):
        if i and (p is prompts[i - 1] or p == prompts[i - 1]):
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def pack_grouped(samples: "TrainSamples", idx: list[int]) -> GroupedRow:
    ids: list[int] = []
    pos: list[int] = []
    keep: list[int] = []
    targets: list[int] = []
    groups = []
    at = 0
    for n in prompt_runs([samples.prompt_ids[i] for i in idx]):
        run = idx[at:at + n]
        at += n
        prompt = samples.prompt_ids[run[0]]
        start, p = len(ids), len(prompt)
        ids += prompt
        pos += range(p)
        for i in run:
            r = samples.response_ids[i]
            keep += [start + p - 1] + list(range(len(ids), len(ids) + len(r) - 1))
            targets += r
            ids += r
            pos += range(p, p + len(r))
        groups.append((start, p, tuple(len(samples.response_ids[i]) for i in run)))
    return GroupedRow(torch.tensor([ids]), torch.tensor([pos]), torch.tensor(keep), torch.tensor(targets),
                      tuple(groups))


def per_sample_to_tokens(values: Tensor, lengths: list[int]) -> list[Tensor]:
    """[N] one value per sample -> that value repeated over each sample's response tokens."""
    return [values[i].expand(n).clone() for i, n in enumerate(lengths)]


def to_padded(values: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-sample [R_i] tensors -> ([N, max R] right-padded with 0, [N, max R] bool mask)."""
    width = max(v.numel() for v in values)
    out = torch.zeros(len(values), width)
    mask = torch.zeros(len(values), width, dtype=torch.bool)
    for i, v in enumerate(values):
        out[i, :v.numel()] = v
        mask[i, :v.numel()] = True
    return out, mask


def from_padded(x: Tensor, lengths: list[int]) -> list[Tensor]:
    return [x[i, :n].clone() for i, n in enumerate(lengths)]
