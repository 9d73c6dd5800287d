"""LoRA, DoRA, rsLoRA and QLoRA through `peft`: the `model.lora` config section and the few
operations every stage needs around an adapter model.

- `apply_lora` wraps a loaded model (causal LM or scalar-head reward model) in a `PeftModel`;
  `resume_lora` re-attaches a checkpoint's adapter to a fresh base, so resume is exact.
- `reference_view` is the same model with its adapters switched off: DPO's reference pass and
  RLVR's KL reference, with no second copy of the weights in memory.
- `merged_state_dict` is the base model's state with every adapter folded in, computed from the
  tensors (the live weights are never merged and unmerged, which would drift them by a rounding
  error every step in bf16). RLVR refreshes its generator from it after each optimizer step; the
  final save writes it as a plain HF directory next to the adapter directory.
- `merge_adapter_dir` is `posttrain merge ADAPTER_DIR OUT_DIR`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

import torch

from posttrain.config import field

ADAPTER = "default"  # peft's name for the one adapter we train


@dataclasses.dataclass
class LoraConfig:
    enabled: bool = field(False, "train low-rank adapters (peft) instead of every weight")
    r: int = field(16, "adapter rank")
    alpha: float = field(32.0, "the update is (alpha / r) * B @ A (alpha / sqrt(r) with use_rslora)")
    dropout: float = field(0.0, "dropout on each adapter's input (RLVR needs 0: rollouts and training must agree)")
    target_modules: list[str] = field(["all-linear"], "module names to adapt (q_proj, v_proj, ...) or all-linear "
                                                      "(every linear layer except the output head)")
    use_dora: bool = field(False, "DoRA: learn each output row's magnitude separately from its direction")
    use_rslora: bool = field(False, "rank-stabilised scaling alpha / sqrt(r)")
    modules_to_save: list[str] = field([], "modules trained in full and saved with the adapter (e.g. embed_tokens); "
                                           "a reward model's score head is always one")
    load_in_4bit: bool = field(False, "QLoRA: hold the frozen base in 4-bit NF4 (bitsandbytes; CUDA only)")
    double_quant: bool = field(True, "QLoRA: also quantize the quantization constants")
    generation: Literal["merged", "adapter"] = field(
        "merged", "how RLVR generates: merged = a plain copy refreshed after every step (fast path, one more "
                  "copy of the weights); adapter = the training model itself, adapters applied on the fly (HF "
                  "path, no copy; QLoRA always does this)")

    def validate(self):
        if not self.enabled:
            if self.load_in_4bit:
                raise ValueError("model.lora.load_in_4bit is QLoRA: it needs model.lora.enabled=true")
            return
        if self.r < 1:
            raise ValueError(f"model.lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"model.lora.alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("model.lora.target_modules is empty: name modules to adapt, or all-linear")
        if "all-linear" in self.target_modules and len(self.target_modules) > 1:
            raise ValueError("model.lora.target_modules: all-linear cannot be combined with module names")
        if self.load_in_4bit and not torch.cuda.is_available():  # say it before anything is written
            quantization_config(self, torch.device("cpu"), torch.float32)


def peft_config(cfg: LoraConfig, task: Literal["causal", "reward"]):
    from peft import LoraConfig as PeftLoraConfig, TaskType

    targets: Any = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    save = list(cfg.modules_to_save)
    if task == "reward" and "score" not in save:
        save.append("score")  # the new head is trained in full, not through an adapter
    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                          use_dora=cfg.use_dora, use_rslora=cfg.use_rslora, modules_to_save=save or None,
                          bias="none", task_type=TaskType.CAUSAL_LM if task == "causal" else TaskType.SEQ_CLS)


def quantization_config(cfg: LoraConfig, device: torch.device, compute_dtype: torch.dtype):
    """The bitsandbytes NF4 config for QLoRA, or None; a clear error where it cannot run."""
    if not cfg.load_in_4bit:
        return None
    if device.type != "cuda":
        raise ValueError(f"model.lora.load_in_4bit (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit NF4 kernels do not "
                         f"run on {device.type}. Here, train plain LoRA (model.lora.load_in_4bit=false)")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("model.lora.load_in_4bit (QLoRA) needs the bitsandbytes package: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                              bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_quant_storage=compute_dtype)


def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def base_model(model):
    """The HF model inside a PeftModel (its linears carry the adapters); the model itself otherwise."""
    return model.get_base_model() if is_peft(model) else model


def apply_lora(model, cfg: LoraConfig, task: Literal["causal", "reward"] = "causal", gradient_checkpointing=False):
    """Wrap `model` in trainable adapters; every base weight is frozen."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(model, peft_config(cfg, task))


def resume_lora(model, adapter_dir: str | os.PathLike):
    """Attach a saved adapter (a checkpoint's) to a freshly loaded base, trainable."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def trainable_summary(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": int(trainable), "total_params": int(total)}


# ------------------------------------------------------------------ the reference: adapters off

class reference_view:
    """`model` with its adapters switched off, called like a model: the frozen base it started from.

    Attribute access goes to the model (config, device, ...), and `eval()` / `train()` are no-ops,
    so the training model's mode is never changed by the code that scores the reference."""

    def __init__(self, model):
        self._model = model

    def __call__(self, *args, **kwargs):
        with self._model.disable_adapter():
            return self._model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def requires_grad_(self, requires_grad: bool = True):
        return self


@contextlib.contextmanager
def adapters_disabled(model):
    """Run the block with `model`'s adapters off (a no-op for a plain model)."""
    if is_peft(model):
        with model.disable_adapter():
            yield
    else:
        yield


# ------------------------------------------------------------------ merging

def _lora_modules(model) -> dict[str, Any]:
    """Base-model name of each adapted linear -> its peft module."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return {name[len(prefix):] if name.startswith(prefix) else name: mod
            for name, mod in model.named_modules() if isinstance(mod, LoraLayer)}


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def merged_state_dict(model, state: dict[str, torch.Tensor] | None = None,
                      base_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The plain base model's state dict with every adapter folded in.

    `state` is the PeftModel's full state dict when the caller already gathered it (FSDP), else the
    model's own. Names are those of the base model (`model.layers.0.self_attn.q_proj.weight`), so the
    result loads into a plain copy with `load_state_dict` or saves as an HF directory. LoRA:
    W + s·B·A; DoRA: the same, rescaled so each output row has the learned magnitude. `base_state`
    (plain names) replaces the base weights W: QLoRA merges into the unquantized base, not into its
    4-bit copy."""
    if state is None:
        state = {k: _full(v) for k, v in model.state_dict().items()}
    prefix = "base_model.model."
    layers = _lora_modules(model)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in state.items():
            name = key[len(prefix):] if key.startswith(prefix) else key
            if ".lora_" in name or ".original_module." in name:
                continue
            if f".modules_to_save.{ADAPTER}." in name:
                name = name.replace(f".modules_to_save.{ADAPTER}.", ".")
            if ".base_layer." in name:
                owner, _, leaf = name.rpartition(".base_layer.")
                name = f"{owner}.{leaf}"
                if base_state is not None:
                    value = base_state[name]
                if leaf == "weight" and owner in layers:
                    value = _merge_weight(value, owner, layers[owner], state, prefix)
            out[name] = value.detach()
    return out


def _merge_weight(w: torch.Tensor, owner: str, layer, state: dict, prefix: str) -> torch.Tensor:
    def get(suffix: str) -> torch.Tensor:
        for key in (f"{prefix}{owner}.{suffix}", f"{owner}.{suffix}"):
            if key in state:
                return _full(state[key])
        raise KeyError(f"{owner}.{suffix} missing from the state dict")

    if getattr(layer, "fan_in_fan_out", False):
        raise ValueError(f"{owner}: fan_in_fan_out adapters (GPT-2 Conv1D) are not supported")
    a = get(f"lora_A.{ADAPTER}.weight").float()
    b = get(f"lora_B.{ADAPTER}.weight").float()
    merged = w.float() + (b @ a) * float(layer.scaling[ADAPTER])
    if getattr(layer, "use_dora", {}).get(ADAPTER, False):
        magnitude = get(f"lora_magnitude_vector.{ADAPTER}.weight").float()
        merged = merged * (magnitude / merged.norm(p=2, dim=1)).unsqueeze(1)
    return merged.to(w.dtype)


def plain_copy(model):
    """A plain (adapter-free) copy of a PeftModel with the adapters merged in: RLVR's generator."""
    import copy

    return copy.deepcopy(model).merge_and_unload()


def save_merged(model, out_dir: str | os.PathLike, tokenizer=None, state: dict | None = None) -> None:
    """Write the merged model as a plain HF directory (`from_pretrained` loads it without peft)."""
    from posttrain.train.checkpoint import save_hf

    merged = merged_state_dict(model, state, base_state=_unquantized_base_state(model))
    save_hf(_plain_skeleton(model), tokenizer, Path(out_dir), state_dict=merged)


def _unquantized_base_state(model) -> dict[str, torch.Tensor] | None:
    """QLoRA: the base's weights reloaded in full precision on the CPU (None for a plain base)."""
    base = base_model(model)
    if not getattr(base, "is_loaded_in_4bit", False):
        return None
    dtype = getattr(base.config, "quantization_config", None)
    dtype = getattr(dtype, "bnb_4bit_compute_dtype", None) or torch.bfloat16
    full = type(base).from_pretrained(base.name_or_path, dtype=dtype, device_map={"": "cpu"})
    return full.state_dict()


def _plain_skeleton(model):
    """A weightless module of the base model's class and config, for `save_pretrained(state_dict=...)`."""
    base = base_model(model)
    config = _plain_config(base.config)
    with torch.device("meta"):
        skeleton = type(base)(config)
    if getattr(base, "generation_config", None) is not None:
        skeleton.generation_config = base.generation_config
    return skeleton


def _plain_config(config):
    import copy

    config = copy.deepcopy(config)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    return config
