"""`posttrain rlvr` end to end on a tiny random model: GRPO learns a verifiable reward, async (with
an RM score added) and PPO runs work, configs validate, and a run killed mid-way resumes to the
identical curve."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, subprocess_env
from posttrain.config import ConfigError, load_config
from posttrain.recipes.rlvr import RLVRConfig, main
from posttrain.train.metrics import read_metrics

# A reward a random model can earn and learn: at least 5 words in 8 sampled tokens (about half the
# vocabulary starts a new word), plus a GSM8K row it never solves (a constant group, filtered).
WORDS = json.dumps({"func_name": "validate_word_constraint", "N": 5, "quantifier": "at least"})
ROWS = [{"messages": [{"role": "user", "content": c}], "ground_truth": WORDS, "dataset": "ifeval"}
        for c in ("Say something.", "Tell me a story.", "Write a few words.")]
ROWS.append({"messages": [{"role": "user", "content": "What is 2 + 2?"}], "ground_truth": "4", "dataset": "gsm8k"})
TIMING = ("time/", "elapsed_s", "samples_per_s", "tokens_per_s")


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rlvr") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


def overrides(model_dir, rows, out, *extra):
    return [f"model.name_or_path={model_dir}", f"data.paths=[{rows}]", "rollout.prompts_per_step=2",
            "rollout.samples_per_prompt=8", "rollout.max_new_tokens=8", "optim.lr=2e-2", "kl.beta=0.01",
            "run.progress=false", f"run.output_dir={out}", *extra]


def curve(run_dir):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in read_metrics(run_dir)]


def test_grpo_learns_and_logs_every_metric(tiny_model_dir, rows_file, tmp_path):
    cfg = load_config(RLVRConfig, None, overrides(tiny_model_dir, rows_file, tmp_path / "g", "train.max_steps=10",
                                                 f"eval.paths=[{rows_file}]", "eval.every_steps=5"))
    main(cfg)
    rows = read_metrics(tmp_path / "g")
    assert [r["step"] for r in rows] == list(range(0, 11))
    steps = rows[1:]
    for key in ("reward/mean", "reward/std", "accuracy/ifeval", "kl/k3", "entropy", "clip_frac", "response_len/mean",
                "truncated_rate", "groups/filtered", "samples_per_s", "time/generate_s", "time/train_s",
                "logprob_diff/mean_abs", "logprob_diff/max_abs"):
        assert any(key in r for r in steps), key
    assert "eval/rows/accuracy" in rows[0] and "eval/rows/accuracy" in rows[5] and "eval/rows/accuracy" in rows[10]
    assert sum(r["groups/filtered"] for r in steps) >= 1  # the unsolvable GSM8K prompt
    trained = [r for r in steps if "logprob_diff/mean_abs" in r]
    assert trained and max(r["logprob_diff/mean_abs"] for r in trained) < 1e-3  # sync: engine == trainer
    first = sum(r["accuracy/ifeval"] for r in steps[:3] if "accuracy/ifeval" in r)
    last = sum(r["accuracy/ifeval"] for r in steps[-3:] if "accuracy/ifeval" in r)
    assert last > first  # the policy learned to emit more words
    assert (tmp_path / "g" / "final" / "config.json").is_file()
    assert len((tmp_path / "g" / "samples.jsonl").read_text().splitlines()) == 20


def test_async_is_one_step_off_policy_and_ppo_trains_a_value_model(tiny_model_dir, rows_file, tmp_path):
    cfg = load_config(RLVRConfig, None, overrides(tiny_model_dir, rows_file, tmp_path / "a", "train.max_steps=4",
                                                 "rollout.mode=async", "train.filter_constant_groups=false",
                                                 f"reward.rm_model={tiny_model_dir}", "reward.rm_weight=0.5"))
    main(cfg)
    rows = read_metrics(tmp_path / "a")
    assert all(abs(r["reward/mean"] - 10 * r["score/mean"]) > 1e-6 for r in rows)  # + 0.5 x RM score
    assert [r["staleness"] for r in rows] == [0, 1, 1, 1]
    assert [r["policy_version"] for r in rows] == [0, 0, 1, 2]
    assert rows[2]["logprob_diff/mean_abs"] > 1e-3  # the generator's weights are one update behind
    assert all(0 < r["tis/mean_weight"] for r in rows[1:])

    cfg = load_config(RLVRConfig, None, overrides(
        tiny_model_dir, rows_file, tmp_path / "p", "algorithm=ppo", "rollout.samples_per_prompt=2",
        "train.max_steps=3", "train.epochs=2", "kl.placement=reward", "kl.estimator=k1", "kl.beta=0.05",
        "ppo.value_lr=1e-3", "reward.truncated_reward=-1"))
    main(cfg)
    rows = read_metrics(tmp_path / "p")
    assert len(rows) == 3 and all(r["optimizer_steps"] == 2 for r in rows)
    assert all("loss/value" in r and "value/mean" in r for r in rows)
    assert all(r["reward/mean"] == -1 for r in rows)  # 8 tokens is the limit: every response is truncated
    assert (tmp_path / "p" / "final_value" / "config.json").is_file()


def test_config_files_and_cross_field_errors():
    for path in sorted((REPO / "configs" / "rlvr").glob("*.yaml")):
        load_config(RLVRConfig, path)
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        load_config(RLVRConfig, None, ["data.paths=[x.jsonl]", "rollout.samples_per_prompt=1"])
    with pytest.raises(ValueError, match="kl.placement=reward needs"):
        load_config(RLVRConfig, None, ["data.paths=[x.jsonl]", "kl.placement=reward"])
    with pytest.raises(ConfigError, match="unknown config key 'rollout.samples'"):
        load_config(RLVRConfig, None, ["data.paths=[x.jsonl]", "rollout.samples=3"])
    with pytest.raises(ValueError, match="rm_weight is set"):
        load_config(RLVRConfig, None, ["data.paths=[x.jsonl]", "reward.rm_weight=0.5"])


def rlvr_cmd(model_dir, rows, out, extra=()):
    return [sys.executable, "-m", "posttrain.cli", "rlvr",
            *overrides(model_dir, rows, out, "train.max_steps=6", "checkpoint.every_steps=2", "checkpoint.keep_last=1",
                       "optim.schedule=linear", *extra)]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_curve(tiny_model_dir, rows_file, tmp_path):
    env = subprocess_env()
    full = tmp_path / "full"
    subprocess.run(rlvr_cmd(tiny_model_dir, rows_file, full), env=env, check=True, capture_output=True, timeout=600)
    reference = curve(full)
    assert [r["step"] for r in reference] == list(range(1, 7))

    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(rlvr_cmd(tiny_model_dir, rows_file, crashed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = crashed / "checkpoints" / "step_000004"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # a crash: no clean-up code runs
    proc.wait()
    assert ckpt.exists() and not (crashed / "final").exists(), "the run must be killed mid-way"

    subprocess.run(rlvr_cmd(tiny_model_dir, rows_file, crashed, ["run.resume=true"]), env=env, check=True,
                   capture_output=True, timeout=600)
    assert curve(crashed) == reference  # exact: sampling is seeded per step
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(crashed / "final")
    b = AutoModelForCausalLM.from_pretrained(full / "final")
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    samples = [json.loads(x)["step"] for x in (crashed / "samples.jsonl").read_text().splitlines()]
    assert samples == sorted(samples) and len(samples) == 12  # no duplicated history after the resume
