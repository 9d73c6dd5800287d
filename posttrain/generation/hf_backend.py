"""Generic fallback backend: any HF causal LM through its own forward and `past_key_values`.

Sequences run in waves: a wave's prompts are left-padded together (attention mask plus explicit
position ids, so padding shifts no position), decoded with the model's own cache, and finished
rows are dropped from the batch and the cache as they end. A new wave starts when the last row
of the previous one finishes (an HF cache cannot hold rows of different lengths without
left padding, so free rows cannot be refilled mid-wave).
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor


class HFBackend:
    supports_refill = False

    def __init__(self, model):
        self.model = model
        p = next(model.parameters())
        self.device = p.device
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or 1 << 30
        params = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in params or "num_logits_to_keep" in params
        self._keep_name = "logits_to_keep" if "logits_to_keep" in params else "num_logits_to_keep"
        # transformers renamed `past_key_values` to `cache` (5.2x); accept either
        self._cache_name = "cache" if "cache" in params else "past_key_values"
        self.num_slots = 0
        self.max_len = 0
        self.lengths: list[int] = []
        self._cache = None
        self._mask: Tensor | None = None
        self._pos: Tensor | None = None

    def refresh_weights(self, force: bool = False) -> None:
        """Nothing to rebuild: the model's own modules are used directly."""

    def allocate(self, num_slots: int, max_len: int) -> None:
        if max_len > self.max_positions:
            raise ValueError(f"max_len {max_len} exceeds the model's max_position_embeddings {self.max_positions}")
        self.num_slots, self.max_len = num_slots, max_len
        self.lengths = []
        self._cache = self._mask = self._pos = None

    def _forward(self, ids: Tensor, mask: Tensor, pos: Tensor, cache) -> tuple[Tensor, object]:
        kwargs = {self._keep_name: 1} if self._logits_to_keep else {}
        kwargs[self._cache_name] = cache
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kwargs)
        new_cache = out.cache if hasattr(out, "cache") else out.past_key_values
        return out.logits[:, -1], new_cache

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], slots: list[int], sources: list[int]) -> Tensor:
        assert not self.lengths and slots == list(range(len(slots))), "HF backend prefills whole waves"
        rows = [prompts[s] for s in sources]
        T = max(len(p) for p in rows)
        ids = torch.zeros(len(rows), T, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for i, p in enumerate(rows):
            ids[i, T - len(p):] = torch.tensor(p)
            mask[i, T - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, self._cache = self._forward(ids, mask, pos, None)
        self._mask, self._pos = mask, pos[:, -1]
        self.lengths = [len(p) for p in rows]
        return logits

    @torch.inference_mode()
    def decode(self, tokens: Tensor, active: int) -> Tensor:
        assert tokens.shape[0] == active == len(self.lengths)
        self._mask = torch.cat([self._mask, self._mask.new_ones(active, 1)], dim=1)
        self._pos = self._pos + 1
        logits, self._cache = self._forward(tokens[:, None], self._mask, self._pos[:, None], self._cache)
        self.lengths = [n + 1 for n in self.lengths]
        return logits

    def select(self, order: list[int]) -> None:
        if order == list(range(len(self.lengths))):
            return
        self.lengths = [self.lengths[i] for i in order]
        if not order:
            self._cache = self._mask = self._pos = None
            return
        idx = torch.tensor(order, device=self.device)
        self._mask, self._pos = self._mask[idx], self._pos[idx]
        self._cache = _select_cache_rows(self._cache, idx)


def _select_cache_rows(cache, idx: Tensor):
    if cache is None:  # a model that keeps no cache
        return None
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(idx)
        return cache
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(idx)
        return cache
    if isinstance(cache, (tuple, list)):  # legacy tuple-of-tuples caches
        return type(cache)(type(layer)(t.index_select(0, idx) for t in layer) for layer in cache)
    raise ValueError(f"cannot drop rows from a cache of type {type(cache).__name__}")
