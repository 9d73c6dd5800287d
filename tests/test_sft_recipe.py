"""End to end: `posttrain sft` on a tiny model; a run killed mid-way resumes to the same curve."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, shared, subprocess_env


def sft_cmd(model_dir, out, extra=()):
    return [sys.executable, "-m", "posttrain.cli", "sft", str(REPO / "configs/sft/smollm2-cpu.yaml"),
            f"model.name_or_path={model_dir}", f"data.paths=[{shared('sft/open_instruct_sft_sample.jsonl')}]",
            "data.limit=24", "data.max_length=192", "data.too_long=truncate", "train.batch_size=4",
            "train.micro_batch_tokens=400", "train.epochs=2", "checkpoint.every_steps=3",
            "checkpoint.keep_last=2", "optim.lr=1e-3", "run.progress=false", f"run.output_dir={out}", *extra]


def losses(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in rows]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_curve(tiny_model_dir, tmp_path):
    env = subprocess_env()
    full = tmp_path / "full"
    subprocess.run(sft_cmd(tiny_model_dir, full), env=env, check=True, capture_output=True, timeout=600)
    reference = losses(full)
    assert [s for s, *_ in reference] == list(range(1, 13))
    assert reference[-1][1] < reference[0][1]  # the tiny model learns

    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(sft_cmd(tiny_model_dir, crashed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = crashed / "checkpoints" / "step_000006"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # a crash: no clean-up code runs
    proc.wait()
    assert ckpt.exists() and not (crashed / "final").exists(), "the run must be killed mid-way"

    subprocess.run(sft_cmd(tiny_model_dir, crashed, ["run.resume=true"]), env=env, check=True,
                   capture_output=True, timeout=600)
    assert losses(crashed) == reference  # exact equality, not approximate

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(crashed / "final")
    tok = AutoTokenizer.from_pretrained(crashed / "final")
    ref_model = AutoModelForCausalLM.from_pretrained(full / "final")
    for (n, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert torch.equal(p, q), n
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4 or tok.eos_token_id in out[0].tolist()


def test_cli_errors_are_one_clear_line(tmp_path):
    env = subprocess_env()
    r = subprocess.run([sys.executable, "-m", "posttrain.cli", "sft", "data.paths=[x.jsonl]", "train.batchsize=3"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "unknown config key 'train.batchsize'" in r.stderr and "batch_size" in r.stderr
    r = subprocess.run([sys.executable, "-m", "posttrain.cli", "sft", f"data.paths=[{tmp_path}/missing.jsonl]",
                        "model.name_or_path=" + str(tmp_path), f"run.output_dir={tmp_path}/o"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
