"""Shared test helpers: the embedded tokenizer and tiny random models built from a config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def tokenizer():
    from posttrain.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def tiny_config(kind: str = "llama", vocab_size: int = 49152):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if kind == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    if kind == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=False)
    raise ValueError(kind)


def tiny_model(kind: str = "llama", seed: int = 0, vocab_size: int = 49152):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(kind, vocab_size)
    cfg._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny Llama-style model with the embedded tokenizer, saved as an HF directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def shared(rel: str) -> str:
    path = SHARED_DATA / rel
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return str(path)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
