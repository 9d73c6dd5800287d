"""Checkpoints as plain Hugging Face directories plus the state needed to resume exactly.

Layout of a checkpoint directory (`<run>/checkpoints/step_000123/`):
- the model and tokenizer as `save_pretrained` writes them (`from_pretrained` loads the directory;
  under LoRA it is the adapter directory, which `PeftModel.from_pretrained` loads onto the base);
- `trainer_state.pt`: optimizer, scheduler, RNG states, step, and the data position;
- `posttrain_config.yaml`: the resolved config of the run.
It is written under a temporary name and renamed, so a crash never leaves a half checkpoint that
resume would pick up.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_hf(model, tokenizer, out_dir: Path, state_dict: dict | None = None) -> None:
    """Write a from_pretrained-loadable directory (atomic)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _published(out_dir, out_dir.name + ".tmp-") as tmp:
        _write_hf(model, tokenizer, tmp, state_dict)


@contextlib.contextmanager
def _published(final: Path, prefix: str):
    """Yield a fresh temporary directory beside `final`; on success it replaces `final`, on any
    error (or a kill before the rename) `final` is untouched and the temporary is removed."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_hf(model, tokenizer, path: Path, state_dict: dict | None) -> None:
    config = getattr(model, "config", None)
    # A peft model writes only its adapter; its base's config (QLoRA: a real 4-bit one) stays as it is.
    if config is not None and hasattr(config, "quantization_config") and not hasattr(model, "peft_config"):
        delattr(config, "quantization_config")
    model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    os.chmod(path, 0o755)


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict[str, Any],
                    config_text: str, keep_last: int | None = None, state_dict: dict | None = None,
                    write: bool = True) -> Path:
    """Save `<run_dir>/checkpoints/step_<step>`; `write=False` on non-main ranks (they only gather)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step_{step:06d}"
    if not write:
        return final
    ckpt_root.mkdir(parents=True, exist_ok=True)
    with _published(final, f".step_{step:06d}.tmp-") as tmp:
        _write_hf(model, tokenizer, tmp, state_dict)
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / "posttrain_config.yaml").write_text(config_text)
    if keep_last:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))
             and (p / "trainer_state.pt").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_trainer_state(ckpt: Path) -> dict:
    # weights_only=False: the state holds numpy RNG tuples written by this program itself.
    return torch.load(Path(ckpt) / "trainer_state.pt", map_location="cpu", weights_only=False)
