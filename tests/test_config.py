import dataclasses

import pytest

from posttrain.config import ConfigError, describe, field, load_config
from posttrain.recipes.sft import SFTConfig


@dataclasses.dataclass
class Inner:
    lr: float = field(1e-3, "learning rate")
    names: list[str] = field(["a"], "names")


@dataclasses.dataclass
class Outer:
    inner: Inner = field(Inner(), "inner section")
    steps: int = field(10, "steps")
    mode: str = field("x", "mode")


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inner:\n  lr: 0.5\nsteps: 3\n")
    cfg = load_config(Outer, p, ["inner.names=[b, c]", "steps=7", "mode=y"])
    assert cfg.inner.lr == 0.5 and cfg.steps == 7 and cfg.mode == "y" and cfg.inner.names == ["b", "c"]


def test_unknown_key_lists_valid_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inner:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, p)
    assert "inner.lrr" in str(e.value) and "lr" in str(e.value) and "names" in str(e.value)
    assert str(p) in str(e.value)
    with pytest.raises(ConfigError, match="Valid keys: inner, mode, steps"):
        load_config(Outer, None, ["stepz=3"])


def test_bad_value_names_key():
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load_config(Outer, None, ["steps=abc"])
    with pytest.raises(ConfigError, match="inner.lr: expected a number"):
        load_config(Outer, None, ["inner.lr=fast"])


def test_literal_and_validate():
    with pytest.raises(ConfigError, match="loss_reduction"):
        load_config(SFTConfig, None, ["data.paths=[a.jsonl]", "train.loss_reduction=median"])
    with pytest.raises(ValueError, match="data.paths is empty"):
        load_config(SFTConfig, None, [])
    cfg = load_config(SFTConfig, None, ["data.paths=[a.jsonl]", "optim.lr=1e-5", "train.max_steps=null"])
    assert cfg.optim.lr == 1e-5 and cfg.train.max_steps is None


def test_describe_lists_every_key():
    text = "\n".join(describe(SFTConfig))
    for key in ("model.name_or_path", "data.max_length", "train.loss_reduction", "optim.warmup_ratio",
                "checkpoint.every_steps", "run.resume"):
        assert key in text


def test_shipped_configs_load():
    from conftest import REPO

    import torch

    for p in sorted((REPO / "configs" / "sft").glob("*.yaml")):
        if "qlora" in p.name and not torch.cuda.is_available():  # QLoRA's config check needs CUDA
            with pytest.raises(ValueError, match="needs a CUDA GPU"):
                load_config(SFTConfig, p)
            continue
        cfg = load_config(SFTConfig, p)
        assert cfg.data.paths
    tulu = load_config(SFTConfig, REPO / "configs" / "sft" / "tulu3-8b.yaml")
    assert (tulu.optim.lr, tulu.optim.schedule, tulu.optim.warmup_ratio, tulu.train.epochs,
            tulu.train.batch_size, tulu.data.max_length, tulu.train.loss_reduction) == \
        (5e-6, "linear", 0.03, 2, 128, 4096, "sum")
    assert tulu.data.paths == ["allenai/tulu-3-sft-mixture"]
