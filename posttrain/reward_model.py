"""Reward models as a library: load a scalar-head model, read per-sequence rewards from packed
rows, and score conversations.

A reward model is `AutoModelForSequenceClassification(num_labels=1)` initialised from a causal LM
checkpoint (the head is new) or from a trained reward model, so its checkpoints load with the same
class. The reward of a sequence is the head's output at its last non-pad token, exactly where the
HF class reads it on a right-padded batch. Used by reward-model training (`recipes/rm.py`), PPO's
value model and RLVR's optional reward-model score (`rl/`), and data filtering.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from posttrain.data.packing import PackedBatch, pack, packed_forward, plan_micro_batches
from posttrain.data.preference import TokenizedPair, encode_conversation, last_non_pad_positions, pack_pairs
from posttrain.models import parse_dtype, resolve_model_path


def load_reward_model(name_or_path: str, tokenizer=None, dtype: torch.dtype | str | None = None,
                      device=None, attn_implementation: str = "varlen"):
    """`AutoModelForSequenceClassification(num_labels=1)` from a causal LM or reward-model
    checkpoint, with `pad_token_id` set (the HF class needs it to find the last real token).
    `attn_implementation` as in `ModelConfig`: "varlen" (per-document attention for packed rows,
    our default), "varlen_flash", or an HF implementation."""
    from transformers import AutoModelForSequenceClassification

    from posttrain.train.varlen_attn import hf_attn_implementation, install

    from posttrain.models import is_adapter_dir, load_merged_adapter

    if is_adapter_dir(resolve_model_path(name_or_path)):  # a LoRA reward model: merged into its base
        return load_merged_adapter(resolve_model_path(name_or_path), lambda base: load_reward_model(
            base, tokenizer, dtype, device, attn_implementation))
    kwargs = {"num_labels": 1, "dtype": parse_dtype(dtype) if isinstance(dtype, str) else (dtype or torch.float32),
              "attn_implementation": hf_attn_implementation(attn_implementation)}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(name_or_path), **kwargs)
    except OSError as e:
        raise ValueError(f"cannot load reward model from '{name_or_path}': {e}") from None
    install(model, attn_implementation)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    if model.config.pad_token_id is None:
        if tokenizer is None or tokenizer.pad_token_id is None:
            raise ValueError(f"{name_or_path}: the config has no pad_token_id; pass a tokenizer with a pad token")
        model.config.pad_token_id = tokenizer.pad_token_id
    score_head(model)
    return model.to(device) if device is not None else model


def score_head(model) -> torch.nn.Module:
    head = getattr(model, "score", None)
    # Under LoRA the head is trained in full inside peft's wrapper, whose output is the live copy's.
    plain = getattr(head, "original_module", head)
    if not isinstance(plain, torch.nn.Linear) or plain.out_features != 1:
        raise ValueError(f"{type(model).__name__}: expected a scalar `score` head (num_labels=1)")
    return head


def sequence_rewards(model, batch: PackedBatch) -> Tensor:
    """[D] float32 reward of each document of a packed row, read at its last non-pad token.

    The model is called through its own forward (so FSDP hooks run); a forward hook on the head
    captures its per-position output, because the HF class itself pools a single position per row.
    """
    captured: list[Tensor] = []
    handle = score_head(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        packed_forward(model, batch)
    finally:
        handle.remove()
    positions = last_non_pad_positions(batch, model.config.pad_token_id).to(captured[0].device)
    return captured[0][0, positions, 0].float()


@torch.no_grad()
def score(model, tokenizer, conversations: Sequence[list[dict] | str], micro_batch_tokens: int = 8192,
          max_length: int | None = None) -> list[float]:
    """Reward of each conversation (a message list, rendered with the tokenizer's chat template
    exactly as in training, or an already-rendered string). Longer than `max_length`: the start is
    cut, keeping the end where the reward is read."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    docs = []
    for conv in conversations:
        ids = (tokenizer(conv, add_special_tokens=False)["input_ids"] if isinstance(conv, str)
               else encode_conversation(tokenizer, conv)[1])
        if not ids:
            raise ValueError("score: a conversation rendered to zero tokens")
        docs.append(ids[-max_length:] if max_length else ids)
    budget = max(micro_batch_tokens, max((len(d) for d in docs), default=1))
    out: list[float] = []
    for group in plan_micro_batches([len(d) for d in docs], budget):
        batch = pack([(docs[i], docs[i]) for i in group]).to(device)
        out += sequence_rewards(model, batch).tolist()
    model.train(was_training)
    return out



def pair_rewards(model, pairs: Sequence[TokenizedPair], device) -> Tensor:
    """[P, 2] rewards (chosen, rejected) from one packed forward."""
    return sequence_rewards(model, pack_pairs(pairs).to(device)).view(-1, 2)


