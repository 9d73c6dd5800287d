"""`posttrain run`: stages chain in one run directory, re-running skips finished stages, and the
report is written with the eval table and curves."""

import json
from pathlib import Path

import pytest

from conftest import REPO, shared
from posttrain.config import load_config
from posttrain.recipes.pipeline import PipelineConfig, run_pipeline
from posttrain.report import eval_table


def test_eval_table_deltas():
    header, rows = eval_table({"base": {"gsm8k/em": 0.10}, "sft": {"gsm8k/em": 0.25}, "dpo": {"gsm8k/em": 0.20}})
    assert header == ["metric", "base", "sft (Δ)", "dpo (Δ)"]
    assert rows == [["gsm8k/em", "10.0", "25.0 (+15.0)", "20.0 (-5.0)"]]


def test_eval_table_shows_sample_counts_as_counts():
    header, rows = eval_table({"base": {"ifeval/acc": 0.5, "ifeval/num_samples": 8.0},
                               "sft": {"ifeval/acc": 0.375, "ifeval/num_samples": 8.0}})
    assert rows == [["ifeval/acc", "50.0", "37.5 (-12.5)"], ["ifeval/num_samples", "8", "8"]]


def test_shipped_recipes_load():
    for name in ("demo.yaml", "tulu3-8b.yaml"):
        cfg = load_config(PipelineConfig, REPO / "recipes" / name)
        assert cfg.sft.config and cfg.dpo.config and cfg.rlvr.config


@pytest.mark.slow
def test_pipeline_decontam_sft_eval_and_skip(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = [f"output_dir={out}", f"base_model={tiny_model_dir}", "stages=[decontaminate,sft,eval]",
                 "eval.tasks=[gsm8k,verifiable:no_commas]", "eval.limit=2", "eval.max_new_tokens=4", "eval.models=[base,sft]"]
    cfg = load_config(PipelineConfig, REPO / "recipes" / "demo.yaml", overrides)
    cfg.sft.overrides = [f"data.paths=[{shared('sft/open_instruct_sft_sample.jsonl')}]", "data.limit=8",
                         "data.max_length=128", "data.too_long=truncate", "train.batch_size=4", "train.max_steps=2",
                         "train.micro_batch_tokens=512", "run.progress=false"]
    cfg.decontaminate.overrides = [f"data_root={REPO.parent / 'shared' / 'data'}"]
    cfg.recipe_dir = str(REPO)
    run_pipeline(cfg)
    for stage in ("decontaminate", "sft"):
        assert (out / stage / "DONE.json").is_file()
    # SFT trained on the decontaminated copy of its data.
    sft_cfg = (out / "sft" / "config.yaml").read_text()
    assert str(out / "decontaminate" / "filtered") in sft_cfg
    table = json.loads((out / "eval" / "table.json").read_text())
    assert set(table) == {"base", "sft"}
    # the RL task's held-out rows (eval.data in demo.yaml) are scored like every other task
    assert table["sft"]["no_commas/num_samples"] == 2 and 0 <= table["sft"]["no_commas/accuracy"] <= 1
    md = (out / "report.md").read_text()
    assert "## Evaluation across stages" in md and "## Decontamination" in md and "sft_curves.png" in md
    assert (out / "plots" / "sft_curves.png").is_file() and (out / "report.html").is_file()
    capsys.readouterr()
    run_pipeline(cfg)  # second run: nothing left to train
    assert "sft: finished earlier" in capsys.readouterr().out


@pytest.mark.slow
def test_pipeline_under_torchrun_two_processes(tiny_model_dir, tmp_path):
    """`torchrun -m posttrain.cli run`: both ranks train SFT and RLVR together (the process group is
    set up and torn down per stage), rank 0 alone decontaminates, evaluates and reports, and the
    other rank waits for each stage's DONE.json instead of racing ahead."""
    import subprocess
    import sys

    import yaml

    from conftest import subprocess_env

    out = tmp_path / "run"
    recipe = {
        "name": "two ranks", "output_dir": str(out), "base_model": tiny_model_dir,
        "stages": ["decontaminate", "sft", "rlvr", "eval"],
        "decontaminate": {"overrides": [f"data_root={REPO.parent / 'shared' / 'data'}"]},
        "sft": {"config": str(REPO / "configs/sft/smollm2-cpu.yaml"),
                "overrides": [f"data.paths=[{shared('sft/open_instruct_sft_sample.jsonl')}]", "data.limit=8",
                              "data.max_length=128", "data.too_long=truncate", "train.batch_size=4",
                              "train.max_steps=2", "train.micro_batch_tokens=512", "run.progress=false",
                              "run.device=cpu"]},
        "rlvr": {"config": str(REPO / "configs/rlvr/smollm2-cpu-grpo.yaml"),
                 "overrides": [f"data.paths=[{REPO / 'data/rlvr/no_commas_train.jsonl'}]", "data.limit=8",
                               "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
                               "rollout.max_new_tokens=8", "train.max_steps=2", "eval.paths=[]",
                               "eval.final_paths=[]", "run.progress=false", "run.device=cpu"]},
        "eval": {"tasks": ["verifiable:no_commas"], "data": {"no_commas": str(REPO / "data/rlvr/no_commas_eval.jsonl")},
                 "limit": 2, "max_new_tokens": 4, "models": ["base", "sft", "rlvr"]},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "posttrain.cli", "run", str(path)], env=subprocess_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("decontaminate", "sft", "rlvr"):
        assert (out / stage / "DONE.json").is_file(), stage
    for stage in ("sft", "rlvr"):
        assert json.loads((out / stage / "summary.json").read_text())["world_size"] == 2
        assert (out / stage / "final" / "config.json").is_file()
    table = json.loads((out / "eval" / "table.json").read_text())
    assert set(table) == {"base", "sft", "rlvr"}
    assert (out / "report.html").is_file()
