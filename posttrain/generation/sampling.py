"""Sampling parameters and the per-step sampler: temperature, top-k, top-p, seeded noise.

Every function here is pure: it maps a [B, V] block of logits and per-row settings to the next
tokens and their log-probs. The engine calls `sample_next` once per decode step.

Randomness is counter-based: the noise for (row key, step, vocab id) is a hash, so a sequence's
tokens depend only on its seed, prompt index, sample index and step, never on which other
sequences share its batch, on the batch order or on the device's RNG state. That keeps sampling
reproducible under continuous batching, where batch composition changes every few steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one prompt. temperature 0 is exact greedy (argmax)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose mass reaches top_p
    top_k: int = 0  # 0 = off
    n: int = 1  # samples per prompt
    stop: tuple[str, ...] = ()  # stop strings, matched in the generated text only
    # None = the model's EOS ids (generation_config / config / tokenizer); () = never stop on a token
    stop_token_ids: tuple[int, ...] | None = None
    seed: int | None = None  # None draws one from torch's global generator
    ignore_eos: bool = False  # keep going past stop tokens (benchmarks), as vLLM's flag
    skip_special_tokens: bool = True  # for the decoded text only; token_ids keep everything
    logprobs: bool = True  # return log-probs of the sampled tokens (see docs/GENERATION.md)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"SamplingParams.stop must be non-empty strings, got {self.stop!r}")
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


# splitmix64 constants as signed int64 (torch has no uint64 arithmetic on every device).
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)


def _shr(x: Tensor, s: int) -> Tensor:
    # logical shift right on int64: arithmetic shift, then clear the copied sign bits
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: Tensor) -> Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping multiply), a bijection on 64-bit words."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def _mix64_int(x: int) -> int:
    """`mix64` on a Python int (unsigned 64-bit in, signed 64-bit out), for host-side keys."""
    m = (1 << 64) - 1
    x &= m
    x = ((x ^ (x >> 30)) * (_M1 & m)) & m
    x = ((x ^ (x >> 27)) * (_M2 & m)) & m
    x ^= x >> 31
    return x - (1 << 64) if x >> 63 else x


def sequence_key(seed: int, prompt_index: int, sample_index: int) -> int:
    """The int64 key that names one sequence's random stream."""
    x = seed
    for part in (prompt_index, sample_index):
        x = _mix64_int(x * _GOLDEN + part)
    return x


def row_uniform(keys: Tensor, steps: Tensor) -> Tensor:
    """[B] float64 uniforms in (0, 1), a pure function of (key, step)."""
    bits = mix64(mix64(keys * _GOLDEN + steps))
    # 53 bits are exact in float64; +0.5 keeps u away from 0 and 1
    return (_shr(bits, 11).to(torch.float64) + 0.5) * (1.0 / (1 << 53))


def inverse_cdf_sample(z: Tensor, u: Tensor) -> Tensor:
    """Row i draws from softmax(z[i]) (entries at -inf never) with its uniform u[i]: the first
    token whose cumulative probability exceeds u[i]. One uniform per row, where Gumbel-max needs
    one per vocabulary entry (hashing those was a quarter of a CPU decode step at batch 24)."""
    p = (z - z.amax(-1, keepdim=True)).exp_()
    cdf = p.to(torch.float64).cumsum_(-1)  # float64: a 49k-term float32 sum drifts by ~1e-6
    target = (u.to(cdf.device) * cdf[:, -1])[:, None]
    # the first index with cdf > target has p > 0, and exists because target < cdf[-1]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=z.shape[-1] - 1)


def filter_top_k_top_p(z: Tensor, top_k: Tensor | None, top_p: Tensor | None, top_k_max: int = 0) -> Tensor:
    """Set logits outside each row's top-k and nucleus (top-p) to -inf.

    z [B, V] float; top_k [B] int (0 = off); top_p [B] float (1 = off); top_k_max, if given,
    bounds the top_k values (a host-side int, so no device sync). Ties at the top-k
    threshold are all kept. The nucleus keeps a token if the mass strictly before it (in sorted
    order) is < top_p, so the most likely token always survives.
    """
    if top_k is not None:
        V = z.shape[-1]
        off = top_k <= 0
        k = torch.where(off, 1, top_k).clamp(max=V)
        kmax = min(V, top_k_max) if top_k_max > 0 else int(k.max())
        vals = torch.topk(z, kmax, dim=-1).values
        thresh = vals.gather(-1, (k.clamp(max=kmax) - 1)[:, None])
        z = z.masked_fill((z < thresh) & ~off[:, None], float("-inf"))
    if top_p is not None:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p[:, None]
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


@dataclass
class RowSettings:
    """Per-row sampling settings as tensors on the logits' device; None fields mean 'off for all'."""

    temperature: Tensor  # [B] float32, 0 = greedy
    keys: Tensor  # [B] int64 stream keys
    steps: Tensor  # [B] int64 index of the token being sampled
    top_k: Tensor | None = None
    top_p: Tensor | None = None
    top_k_max: int = 0  # max of top_k, known on the host: sizes the topk call without a sync
    all_greedy: bool = False
    unit_temperature: bool = False  # every row has T in {0, 1}: skip the division

    def select(self, idx: Tensor) -> "RowSettings":
        """Rows `idx` in that order (host-side flags stay valid: dropping rows cannot break them)."""
        pick = lambda t: None if t is None else t.index_select(0, idx)  # noqa: E731
        return replace(self, temperature=pick(self.temperature), keys=pick(self.keys), steps=pick(self.steps),
                       top_k=pick(self.top_k), top_p=pick(self.top_p))

    def slice(self, start: int, length: int) -> "RowSettings":
        end = start + length
        cut = lambda t: None if t is None else t[start:end]  # noqa: E731
        return replace(self, temperature=self.temperature[start:end], keys=self.keys[start:end],
                       steps=self.steps[start:end], top_k=cut(self.top_k), top_p=cut(self.top_p))


def sample_next(logits: Tensor, rows: RowSettings, want_logprobs: bool = True) -> tuple[Tensor, Tensor | None]:
    """Pick the next token per row and its log-prob under softmax(logits / T).

    The reported log-prob is log_softmax(logits.float() / T) at the chosen token, over the full
    vocabulary (before top-k/top-p), with T = 1 for greedy rows: exactly what a trainer computes
    when it rescores the rollout with `token_logprobs(..., temperature=T)`.
    """
    z = logits.float()
    if not rows.unit_temperature:
        z = z / torch.where(rows.temperature > 0, rows.temperature, 1.0)[:, None]
    if rows.all_greedy:
        tokens = z.argmax(-1)
    else:
        filtered = filter_top_k_top_p(z, rows.top_k, rows.top_p, rows.top_k_max)
        sampled = inverse_cdf_sample(filtered, row_uniform(rows.keys, rows.steps))
        tokens = torch.where(rows.temperature > 0, sampled, z.argmax(-1))
    if not want_logprobs:
        return tokens, None
    picked = z.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, picked - torch.logsumexp(z, dim=-1)
