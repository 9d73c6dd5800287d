"""`posttrain run`: stages chain in one run directory, re-running skips finished stages, and the
report is written with the eval table and curves."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import posttrain.recipes.pipeline as pipeline
from conftest import REPO, shared
from posttrain.cli import main as cli_main
from posttrain.config import apply_overrides, load_config
from posttrain.recipes.pipeline import PipelineConfig, run_pipeline
from posttrain.report import eval_table
from posttrain.stages import resolve


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


def _fake_stages(monkeypatch, prefs_result=None):
    """Stand-in stage entries: each records the overrides the pipeline passed it and leaves what
    the real stage would (filtered data, a final model)."""
    calls = []

    def stage_config(cfg, stage, extra):
        calls.append((stage, list(extra)))
        apply_overrides({}, extra, resolve(stage)[1])  # every key the pipeline sets exists in the stage's config
        ov = dict(x.split("=", 1) for x in extra)

        def run(_):
            if stage == "decontaminate":
                (Path(ov["out_dir"]) / "filtered").mkdir(parents=True, exist_ok=True)
                (Path(ov["out_dir"]) / "filtered" / "sft0.jsonl").write_text("{}\n")
            elif stage == "prefs":
                calls.append(("prefs.policy", vars(policy).copy()))
                if prefs_result:
                    (Path(ov["out_dir"]) / "preferences.jsonl").parent.mkdir(parents=True, exist_ok=True)
                    (Path(ov["out_dir"]) / "preferences.jsonl").write_text(prefs_result)
            else:
                (Path(ov["run.output_dir"]) / "final").mkdir(parents=True, exist_ok=True)
                (Path(ov["run.output_dir"]) / "final" / "config.json").write_text("{}")
            return 0

        return SimpleNamespace(data=SimpleNamespace(paths=["a.jsonl", "b.jsonl"]), train={}, policy=policy), run

    policy = SimpleNamespace(base_url=None, checkpoint="smollm2-135m", chat_template="model")

    monkeypatch.setattr(pipeline, "_stage_config", stage_config)
    monkeypatch.setattr(pipeline, "run_evals",
                        lambda cfg, out, models, infos, artefacts=None: calls.append(("eval", models)) or {})
    return calls


def test_stage_table_chains_artefacts_and_restores_them_from_done(tmp_path, monkeypatch, capsys):
    calls = _fake_stages(monkeypatch, prefs_result='{"chosen": [], "rejected": []}\n')
    out = tmp_path / "run"
    cfg = load_config(PipelineConfig, None, [f"output_dir={out}", "prefs.enabled=true"])
    run_pipeline(cfg)
    train = {stage: ov for stage, ov in calls if stage in ("sft", "dpo", "rlvr") and ov}
    assert train["sft"] == ["model.name_or_path=smollm2-135m", "model.chat_template=model",
                            f"run.output_dir={out / 'sft'}", "run.resume=false",
                            f"data.paths=[{out / 'decontaminate' / 'filtered' / 'sft0.jsonl'}]"]
    assert train["dpo"][0] == f"model.name_or_path={out / 'sft' / 'final'}"
    pairs = out / "prefs" / "preferences.jsonl"
    assert train["dpo"][-1] == f"data.paths=[{pairs}]"
    # on-policy: the prefs stage answers with the SFT model, into its own stage directory
    assert ("prefs", [f"out_dir={out / 'prefs'}"]) in calls
    assert dict(calls)["prefs.policy"]["checkpoint"] == str(out / "sft" / "final")
    assert train["rlvr"][0] == f"model.name_or_path={out / 'dpo' / 'final'}"
    assert not any(o.startswith("data.") for o in train["rlvr"])
    assert json.loads((out / "decontaminate" / "DONE.json").read_text())["sft_data"] == \
        [str(out / "decontaminate" / "filtered" / "sft0.jsonl")]
    assert json.loads((out / "prefs" / "DONE.json").read_text())["dpo_data"] == [str(pairs)]
    assert json.loads((out / "sft" / "DONE.json").read_text())["model"] == str(out / "sft" / "final")
    models = {"base": "smollm2-135m", **{s: str(out / s / "final") for s in ("sft", "dpo", "rlvr")}}
    assert calls[-1] == ("eval", models)
    assert (out / "report.md").is_file()

    # Again: every stage is skipped, and the finished models still reach evaluation.
    calls.clear()
    capsys.readouterr()
    run_pipeline(cfg)
    assert [c[0] for c in calls] == ["eval"] and len(calls[0][1]) == 4
    assert capsys.readouterr().out.count("finished earlier") == 5

    # One stage re-run alone: it starts from the finished DPO model.
    calls.clear()
    shutil.rmtree(out / "rlvr")
    run_pipeline(load_config(PipelineConfig, None, [f"output_dir={out}", "stages=[rlvr]"]))
    assert {c[0] for c in calls} == {"rlvr"}
    assert next(ov for _, ov in calls if ov)[0] == f"model.name_or_path={out / 'dpo' / 'final'}"


def test_unselected_stage_hands_on_its_model_but_not_its_data(tmp_path, monkeypatch):
    calls = _fake_stages(monkeypatch)
    out = tmp_path / "run"
    run_pipeline(load_config(PipelineConfig, None, [f"output_dir={out}", "stages=[decontaminate,sft]"]))
    calls.clear()
    (out / "sft" / "DONE.json").unlink()
    run_pipeline(load_config(PipelineConfig, None, [f"output_dir={out}", "stages=[sft,dpo]"]))
    sft = next(ov for stage, ov in calls if stage == "sft" and ov)
    assert not any(o.startswith("data.paths") for o in sft)  # decontaminate was not selected
    assert next(ov for stage, ov in calls if stage == "dpo" and ov)[0] == f"model.name_or_path={out / 'sft' / 'final'}"


def test_heldout_rows_are_split_off_before_training_and_scored_by_eval(tmp_path, monkeypatch):
    calls = _fake_stages(monkeypatch)
    seen = {}
    monkeypatch.setattr(pipeline, "run_evals", lambda cfg, out, models, infos, artefacts=None:
                        seen.update(plan=pipeline._eval_plan(cfg, models, artefacts)) or {})
    monkeypatch.chdir(tmp_path)
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    for name in ("a.jsonl", "b.jsonl"):  # the fake SFT config's data.paths
        (tmp_path / name).write_text((json.dumps(chat) + "\n") * 5)
    out = tmp_path / "run"
    cfg = load_config(PipelineConfig, None, [f"output_dir={out}", "decontaminate.enabled=false", "sft.heldout=3",
                                             "seed=7", "eval.tasks=[chat_nll,verifiable:no_commas]",
                                             "eval.task_models={chat_nll: [base, sft]}"])
    run_pipeline(cfg)
    sft = next(ov for stage, ov in calls if stage == "sft" and ov)
    split = out / "sft" / "split"
    assert f"data.paths=[{split / 'train.jsonl'}]" in sft and "run.seed=7" in sft
    assert len((split / "train.jsonl").read_text().splitlines()) == 7
    assert len((split / "heldout.jsonl").read_text().splitlines()) == 3
    assert json.loads((out / "sft" / "DONE.json").read_text())["heldout_sft"] == str(split / "heldout.jsonl")
    plan = seen["plan"]
    assert plan["base"][0] == ["chat_nll", "verifiable:no_commas"] and plan["dpo"][0] == ["verifiable:no_commas"]
    assert plan["sft"][1]["chat_nll"] == str(split / "heldout.jsonl")
    # stages=[eval] alone still finds the held-out rows of the finished SFT stage
    seen.clear()
    run_pipeline(load_config(PipelineConfig, None, [f"output_dir={out}", "stages=[eval]",
                                                    "eval.tasks=[chat_nll]"]))
    assert seen["plan"]["sft"][1]["chat_nll"] == str(split / "heldout.jsonl")
    with pytest.raises(ValueError, match="only sft and dpo hold out"):
        load_config(PipelineConfig, None, ["rlvr.heldout=4"])


def test_report_command_rerenders_a_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "decontaminate").mkdir(parents=True)
    (out / "pipeline.yaml").write_text("name: fake run\nbase_model: tiny-base\n")
    (out / "decontaminate" / "DONE.json").write_text(json.dumps({"seconds": 3.0, "sft_data": []}))
    (out / "decontaminate" / "report.md").write_text("| train | gsm8k |\n|---|---|\n| sft0 | 0.0% |\n")
    sft = out / "sft"
    sft.mkdir()
    (sft / "DONE.json").write_text(json.dumps({"seconds": 12.0}))
    (sft / "config.yaml").write_text("train:\n  max_steps: 2\n")
    (sft / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 2.0 - i / 10, "lr": 1e-5}) + "\n"
                                               for i in range(1, 4)))
    (out / "dpo").mkdir()  # started, never finished
    (out / "eval").mkdir()
    (out / "eval" / "table.json").write_text(json.dumps({"base": {"ifeval/acc": 0.25}, "sft": {"ifeval/acc": 0.5}}))

    assert cli_main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert md.startswith("# fake run\n") and "base model: tiny-base" in md
    assert "| decontaminate | done | 3 |" in md and "| sft | done | 12 |" in md and "| dpo | not finished | – |" in md
    assert "| ifeval/acc | 25.0 | 50.0 (+25.0) |" in md
    assert "## Decontamination" in md and "| sft0 | 0.0% |" in md
    assert "max_steps: 2" in md and (out / "plots" / "sft_curves.png").is_file()
    assert "<h1>fake run</h1>" in (out / "report.html").read_text()

    assert cli_main(["report", str(out), "title=renamed"]) == 0
    assert (out / "report.md").read_text().startswith("# renamed\n")
    capsys.readouterr()
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "pipeline.yaml not found" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_decontam_sft_eval_and_skip(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = [f"output_dir={out}", f"base_model={tiny_model_dir}", "stages=[decontaminate,sft,eval]",
                 "eval.tasks=[gsm8k,verifiable:no_commas]", "eval.limit=2", "eval.max_new_tokens=4", "eval.models=[base,sft]",
                 "eval.task_limits={}", "eval.task_max_new_tokens={}", "eval.task_models={}", "eval.targets={}",
                 "sft.heldout=0"]
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


def test_eval_table_with_intervals_and_paired_deltas():
    stats = {"intervals": {"base": {"t/acc": [0.05, 0.2]}, "sft": {"t/acc": [0.3, 0.5]}},
             "deltas": {"sft": {"t/acc": {"delta": 0.3, "low": 0.2, "high": 0.4, "significant": True, "n": 50}},
                        "dpo": {"t/acc": {"delta": -0.02, "low": -0.1, "high": 0.06, "significant": False, "n": 50}}}}
    header, rows = eval_table({"base": {"t/acc": 0.1}, "sft": {"t/acc": 0.4}, "dpo": {"t/acc": 0.38}}, stats)
    assert rows == [["t/acc", "10.0 [5.0, 20.0]", "40.0 [30.0, 50.0] (+30.0*)", "38.0 (-2.0)"]]
