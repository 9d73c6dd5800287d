"""Per-pair response log-probs from one packed forward, and the on-disk reference log-prob cache.

The reference model's log-probs are computed once, in a no-grad pass before training, and saved
under a key that hashes the reference weights, the tokenized pairs (which carry the data, chat
template, tokenizer and max length) and the compute dtype. A run that finds the key on disk loads
a small [n, 2] tensor and never builds a reference model; a changed key recomputes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from posttrain.data.chat import IGNORE_INDEX
from posttrain.data.packing import PackedBatch, packed_forward, plan_micro_batches
from posttrain.data.preference import TokenizedPair, pack_pairs
from posttrain.train.dist import DistInfo, all_reduce_max
from posttrain.losses.logprobs import segment_sum, token_logprobs

CACHE_VERSION = 1  # bump when the computation changes meaning


def pair_logps(model, batch: PackedBatch) -> tuple[Tensor, Tensor]:
    """Summed response log-probs [P, 2] (chosen, rejected) and response lengths [P, 2] of a row
    packed by `pack_pairs`, in float32 (differentiable when grad is enabled).

    Only response positions go through the LM head (`logits_to_keep`): prompt tokens need no
    logits, which saves the [N, vocab] projection and its memory for them.
    """
    targets = batch.targets[0]
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
    logits = packed_forward(model, batch, logits_to_keep=keep).logits  # [1, K, V]
    logps = token_logprobs(logits, targets[keep][None], shift=False)[0]
    seg = batch.segment_ids().to(keep.device)[keep]
    n_docs = len(batch.seq_lens)
    sums = segment_sum(logps, seg, n_docs)
    lengths = segment_sum(torch.ones_like(logps, dtype=torch.float32), seg, n_docs)
    return sums.view(-1, 2), lengths.view(-1, 2)


@torch.no_grad()
def compute_pair_logps(model, pairs: Sequence[TokenizedPair], micro_batch_tokens: int, info: DistInfo,
                       progress: Callable[[int], None] | None = None) -> Tensor:
    """[n, 2] float32 summed response log-probs of every pair, without gradients.

    Ranks split the pairs (i::world) and sum their rows, so every rank returns the full tensor.
    Under FSDP each rank must run the same number of forwards; short ranks run padding passes.
    """
    was_training = model.training
    model.eval()
    mine = list(range(info.rank, len(pairs), info.world_size))
    plan = plan_micro_batches([pairs[i].num_tokens for i in mine], micro_batch_tokens)
    n_micro = int(all_reduce_max(len(plan), info))
    out = torch.zeros(len(pairs), 2, dtype=torch.float32, device=info.device)
    for m in range(n_micro):
        if m >= len(plan):
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=info.device), use_cache=False)
            continue
        idx = [mine[j] for j in plan[m]]
        sums, _ = pair_logps(model, pack_pairs([pairs[i] for i in idx]).to(info.device))
        out[torch.tensor(idx, device=info.device)] = sums.float()
        if progress is not None:
            progress(len(idx))
    if info.distributed:
        dist.all_reduce(out)
    reshard(model)
    model.train(was_training)
    return out.cpu()


def reshard(model) -> None:
    """Return FSDP2 modules to their sharded state after a no-grad forward.

    The root module keeps its parameters gathered after a forward (it expects a backward); without
    a backward they stay gathered, so `model.parameters()` (an optimizer built next) and the
    state-dict helpers would see the unsharded tensors. No-op without FSDP.
    """
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


# ---------------------------------------------------------------- fingerprints and the cache

def model_fingerprint(path: str) -> str:
    """Identity of a model's weights: for a local directory, its config and each weight file's
    name, size and modification time (cheap for multi-GB checkpoints; rewriting the weights
    changes it); for a hub id, the id."""
    p = Path(path)
    h = hashlib.sha256(str(p.resolve() if p.exists() else path).encode())
    if p.is_dir():
        for f in sorted(p.iterdir()):
            if f.name == "config.json" or f.suffix in (".safetensors", ".bin", ".pt"):
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        if (p / "config.json").is_file():
            h.update((p / "config.json").read_bytes())
    return h.hexdigest()


def cache_key(**parts: str) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_path(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / f"ref_logps_{key}.pt"


def load_cached(cache_dir: str | os.PathLike, key: str, n_pairs: int) -> Tensor | None:
    path = cache_path(cache_dir, key)
    if not path.is_file():
        return None
    blob = torch.load(path, map_location="cpu", weights_only=True)
    logps = blob["logps"]
    if tuple(logps.shape) != (n_pairs, 2):  # a hash collision or a hand-edited file
        return None
    return logps


def save_cached(cache_dir: str | os.PathLike, key: str, logps: Tensor, meta: dict) -> Path:
    """Write atomically (temporary name, then rename): a crash never leaves a half file."""
    path = cache_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"logps": logps.cpu(), "meta": meta}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    path.with_suffix(".json").write_text(json.dumps({**meta, "key": key, "pairs": int(logps.shape[0])}, indent=2))
    return path


def reference_logps(cache_dir: str | os.PathLike, key: str, n_pairs: int, compute: Callable[[], Tensor],
                    info: DistInfo, meta: dict, log: Callable[[str], None] = print) -> tuple[Tensor, bool]:
    """(the [n, 2] reference log-probs, whether they came from the cache). `compute` runs on
    every rank on a miss (it is collective); rank 0 writes the file."""
    cached = load_cached(cache_dir, key, n_pairs)
    if info.distributed:  # every rank must take the same branch
        hit = torch.tensor([0.0 if cached is None else 1.0])
        dist.all_reduce(hit, op=dist.ReduceOp.MIN)
        cached = cached if hit.item() == 1.0 else None
    if cached is not None:
        log(f"[ref] loaded cached reference log-probs for {n_pairs} pairs from {cache_path(cache_dir, key)}")
        return cached, True
    logps = compute()
    assert tuple(logps.shape) == (n_pairs, 2)
    if info.is_main:
        path = save_cached(cache_dir, key, logps, meta)
        log(f"[ref] cached reference log-probs for {n_pairs} pairs at {path}")
    return logps, False
