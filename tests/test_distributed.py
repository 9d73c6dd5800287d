"""FSDP2 under torchrun on CPU (gloo, 2 processes) matches the single-process run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, shared, subprocess_env


def args(model_dir, out, reduction):
    return ["sft", str(REPO / "configs/sft/smollm2-cpu.yaml"), f"model.name_or_path={model_dir}",
            f"data.paths=[{shared('sft/open_instruct_sft_sample.jsonl')}]", "data.limit=16",
            "data.max_length=160", "data.too_long=truncate", "train.batch_size=4", "train.micro_batch_tokens=320",
            "train.max_steps=4", f"train.loss_reduction={reduction}", "optim.lr=1e-3", "checkpoint.every_steps=2",
            "run.progress=false", f"run.output_dir={out}", "run.device=cpu"]


def curve(out):
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows], [r["grad_norm"] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["mean"])
def test_fsdp2_two_processes_match_single_process(tiny_model_dir, tmp_path, reduction):
    env = subprocess_env()
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "posttrain.cli", *args(tiny_model_dir, single, reduction)],
                   env=env, check=True, capture_output=True, timeout=600)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "posttrain.cli", *args(tiny_model_dir, multi, reduction)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (l1, g1), (l2, g2) = curve(single), curve(multi)
    assert len(l1) == len(l2) == 4
    torch.testing.assert_close(torch.tensor(l2), torch.tensor(l1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(g2), torch.tensor(g1), rtol=1e-3, atol=1e-4)
    # The sharded run gathers full weights into a loadable HF directory with the same values.
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(single / "final")
    b = AutoModelForCausalLM.from_pretrained(multi / "final")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4, msg=n)
    assert (multi / "checkpoints" / "step_000002" / "trainer_state.pt").is_file()


@pytest.mark.slow
def test_fsdp2_lora_two_processes_match_single_process_and_resume(tiny_model_dir, tmp_path):
    """FSDP2 shards a peft model (frozen base, trainable adapters): same curve as one process, the
    gathered adapter and merged model equal, and a sharded run resumes from its adapter checkpoint."""
    import shutil

    from safetensors.torch import load_file

    env = subprocess_env()
    lora = ["model.lora.enabled=true", "model.lora.r=8", "optim.lr=1e-2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "posttrain.cli"]
    single, multi, resumed = tmp_path / "single", tmp_path / "multi", tmp_path / "resumed"
    subprocess.run([sys.executable, "-m", "posttrain.cli", *args(tiny_model_dir, single, "mean"), *lora],
                   env=env, check=True, capture_output=True, timeout=600)
    r = subprocess.run([*torchrun, *args(tiny_model_dir, multi, "mean"), *lora], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (l1, g1), (l2, g2) = curve(single), curve(multi)
    torch.testing.assert_close(torch.tensor(l2), torch.tensor(l1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(g2), torch.tensor(g1), rtol=1e-3, atol=1e-4)
    for sub, name in (("final_adapter", "adapter_model.safetensors"), ("final", "model.safetensors")):
        a, b = load_file(single / sub / name), load_file(multi / sub / name)
        # the gathered state also names the tied head (lm_head.weight), which one process dedups
        assert set(a) <= set(b) and set(b) - set(a) <= {"lm_head.weight"}
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)

    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(multi / "checkpoints" / "step_000002", resumed / "checkpoints" / "step_000002")
    rows = (multi / "metrics.jsonl").read_text().splitlines()[:2]
    (resumed / "metrics.jsonl").write_text("".join(x + "\n" for x in rows))
    r = subprocess.run([*torchrun, *args(tiny_model_dir, resumed, "mean"), *lora, "run.resume=true"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (l3, g3) = curve(resumed)
    torch.testing.assert_close(torch.tensor(l3), torch.tensor(l2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(g3), torch.tensor(g2), rtol=1e-4, atol=1e-5)
