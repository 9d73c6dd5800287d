"""`posttrain dpo` / `posttrain rm` under torchrun on CPU (gloo, 2 processes, FSDP2) match the
single-process run: the per-pair loss is averaged over the global pair count of the step, and the
reference pass split across ranks gives the same cached log-probs."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import subprocess_env
from posttrain.config import load_config


def rows_of(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def write_pairs(path: Path, n: int) -> str:
    rows = []
    for k in range(n):  # uneven lengths, so ranks get different micro-batch counts
        rows.append({"prompt": f"Question {k}: " + "tell me more " * (k % 4),
                     "chosen": f"Answer {k}. " + "Here is a detail. " * (1 + k % 3),
                     "rejected": "No." if k % 2 else "I would rather not say anything about it at all."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def overrides(stage, model_dir, data, out, cache):
    common = [f"model.name_or_path={model_dir}", f"data.paths=[{data}]", "data.max_length=96", "data.eval_size=6",
              "train.batch_size=6", "train.micro_batch_tokens=200", "train.max_steps=3", "optim.lr=1e-3",
              "optim.warmup_ratio=0", "checkpoint.every_steps=2", "run.progress=false", f"run.output_dir={out}",
              "run.device=cpu"]
    if stage == "dpo":
        common += ["loss.name=dpo_norm", "loss.beta=2.0", f"ref.cache_dir={cache}"]
    return common


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dpo", "rm"])
def test_two_processes_match_one(tiny_model_dir, tmp_path, stage):
    data = write_pairs(tmp_path / "pairs.jsonl", 24)
    env = subprocess_env()
    single, multi = tmp_path / "single", tmp_path / "multi"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "posttrain.cli", stage, *overrides(stage, tiny_model_dir, data, multi, tmp_path / "cache-multi")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # the single-process run in this process (one thread, like the subprocesses)
    module = importlib.import_module(f"posttrain.recipes.{stage}")
    cls = module.DPOConfig if stage == "dpo" else module.RMConfig
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module.main(load_config(cls, None, overrides(stage, tiny_model_dir, data, single, tmp_path / "cache-single")))
    finally:
        torch.set_num_threads(threads)
    a, b = rows_of(single), rows_of(multi)
    assert len(a) == len(b) == 3
    for key in ("loss", "accuracy", "grad_norm", "rewards/chosen", "eval/accuracy", "eval/loss"):
        got = torch.tensor([r[key] for r in b if key in r], dtype=torch.float64)
        want = torch.tensor([r[key] for r in a if key in r], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4, msg=key)
    if stage == "dpo":
        (fa,) = (tmp_path / "cache-single").glob("ref_logps_*.pt")
        (fb,) = (tmp_path / "cache-multi").glob("ref_logps_*.pt")
        assert fa.name == fb.name  # same key
        torch.testing.assert_close(torch.load(fb)["logps"], torch.load(fa)["logps"], rtol=1e-5, atol=1e-3)
    else:
        from transformers import AutoModelForSequenceClassification

        m = AutoModelForSequenceClassification.from_pretrained(multi / "final")
        s = AutoModelForSequenceClassification.from_pretrained(single / "final")
        torch.testing.assert_close(m.score.weight, s.score.weight, rtol=1e-3, atol=1e-4)
