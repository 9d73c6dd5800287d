"""Data parallelism applied from outside the model: FSDP2 (`fully_shard`) under torchrun.

With one process every function here is the identity, so recipes have one code path.
"""

from __future__ import annotations

import contextlib

import torch

from posttrain.train.dist import DistInfo


def _blocks(model) -> list[torch.nn.Module]:
    model = _hf_model(model)
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"don't know how to shard {type(model).__name__}: no model.layers")
    return list(layers)


def parallelize(model: torch.nn.Module, info: DistInfo, param_dtype: torch.dtype | None = None,
                reduce_dtype: torch.dtype | None = torch.float32) -> torch.nn.Module:
    """Shard each transformer block, then the root (embeddings, final norm, head) with FSDP2."""
    if not info.distributed:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in _blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    # Under LoRA the root is the HF model inside peft's wrapper (which holds no weights of its own).
    fully_shard(_hf_model(model), mesh=mesh, mp_policy=mp)
    return model


def _hf_model(model):
    get_base = getattr(type(model), "get_base_model", None)  # a peft PeftModel
    return model.get_base_model() if get_base is not None else model


def model_state_dict(model: torch.nn.Module, info: DistInfo) -> dict | None:
    """Full (unsharded) state dict on rank 0 for saving; None means 'use the model as is'.

    Collective under FSDP: every rank must call it.
    """
    if not info.distributed:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@contextlib.contextmanager
def sync_grads_context(model: torch.nn.Module, last: bool):
    """Skip the gradient reduce-scatter on all but the last micro-batch of a step."""
    setter = getattr(model, "set_requires_gradient_sync", None)
    if setter is not None:
        setter(last)
    yield


def optimizer_state_dict(model, optimizer, info: DistInfo) -> dict:
    """Optimizer state to save: the full (gathered) state under FSDP, the plain one otherwise."""
    if not info.distributed:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, state: dict, info: DistInfo) -> None:
    if not info.distributed:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def copy_full_weights(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """dst's weights := src's, one tensor at a time; src may be FSDP-sharded (then collective: every
    rank calls it), dst a plain module of the same architecture (e.g. a rollout generator's copy)."""
    from torch.distributed.tensor import DTensor

    own = dst.state_dict()
    with torch.no_grad():
        for name, value in src.state_dict().items():
            full = value.full_tensor() if isinstance(value, DTensor) else value
            own[name].copy_(full)


def full_state_dict(model: torch.nn.Module) -> dict:
    """Every tensor of `model` unsharded and detached, on every rank (collective under FSDP)."""
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
            for k, v in model.state_dict().items()}


def load_model_state(model: torch.nn.Module, state: dict, info: DistInfo) -> None:
    """Load a full (unsharded) state dict, as `model_state_dict` saved it, into a possibly sharded model."""
    if not info.distributed:
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
