"""Golden values: each training stage, run on a tiny model with a fixed seed, gives the same
per-step metrics and the same final weights, bit for bit, as the code gave when the values were
recorded. They guard refactors that must not change behaviour.

The values live in tests/fixtures/golden/<case>.json, one record per CPU kernel family
(`torch.backends.cpu.get_cpu_capability()`: AVX2, AVX512, ...), because the same float32 sums come
out in other last bits on other vector units (the AVX2 records reproduce on an AMD EPYC, not on an
AVX-512 Xeon, for the same commit). On a recorded family the check is bit for bit; on another one
the metrics are compared to the first record within a tolerance far below any behavioural change
(rtol 1e-4) and the weights, whose digests cannot match, are not compared. To (re-)record this
machine's family after an intended change of behaviour, run
`POSTTRAIN_RECORD_GOLDEN=1 python -m pytest tests/test_golden_stages.py` (other families' records
are kept: re-record them on such a machine, or delete them) and say in the commit why the numbers
moved.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_model
from posttrain.config import load_config
from posttrain.train.metrics import read_metrics

GOLDEN = REPO / "tests" / "fixtures" / "golden"
RECORD = os.environ.get("POSTTRAIN_RECORD_GOLDEN") == "1"
CPU = torch.backends.cpu.get_cpu_capability()  # the kernel family the float sums depend on
# Wall-clock metrics change from run to run; everything else must not.
TIMING = ("time/", "elapsed_s", "samples_per_s", "tokens_per_s", "pairs_per_s", "ref_pass_s")

U = lambda s: {"role": "user", "content": s}  # noqa: E731
A = lambda s: {"role": "assistant", "content": s}  # noqa: E731


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-exact sums need a fixed reduction order
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("golden-model")
    tiny_model("llama", seed=3).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden-data")
    sft = [{"messages": [U(f"What is {a} plus {b}?"), A(f"{a} plus {b} is {a + b}.")]}
           for a in range(1, 5) for b in range(2, 5)]
    pairs = [{"prompt": f"What is {k % 7 + 1} times {k % 5 + 2}?",
              "chosen": f"It is {(k % 7 + 1) * (k % 5 + 2)}.",
              "rejected": "I do not know." if k % 2 else "Maybe seven? I am not sure at all."} for k in range(16)]
    words = json.dumps({"func_name": "validate_word_constraint", "N": 5, "quantifier": "at least"})
    rlvr = [{"messages": [U(c)], "ground_truth": words, "dataset": "ifeval"}
            for c in ("Say something.", "Tell me a story.", "Write a few words.", "Describe the sea.")]
    rlvr.append({"messages": [U("What is 2 + 2?")], "ground_truth": "4", "dataset": "gsm8k"})
    files = {}
    for name, rows in (("sft", sft), ("pairs", pairs), ("rlvr", rlvr)):
        files[name] = root / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def _weights_digest(path: Path) -> str:
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        tensors = load_file(f)
        for name in sorted(tensors):
            h.update(name.encode())
            h.update(tensors[name].to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _curve(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in read_metrics(run_dir)]


def _check(case: str, run_dir: Path, final_dirs: list[str]) -> None:
    got = {"metrics": _curve(run_dir), "weights": {d: _weights_digest(run_dir / d) for d in final_dirs}}
    path = GOLDEN / f"{case}.json"
    records = json.loads(path.read_text()) if path.is_file() else {}
    if RECORD:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**records, CPU: got}, indent=1, sort_keys=True) + "\n")
        return
    assert records, f"{case}: no golden record in {path}"
    if CPU in records:
        want = records[CPU]
        assert got["metrics"] == want["metrics"], f"{case}: per-step metrics changed ({CPU} record)"
        assert got["weights"] == want["weights"], f"{case}: final weights changed ({CPU} record)"
        return
    family, want = next(iter(sorted(records.items())))
    assert len(got["metrics"]) == len(want["metrics"]), f"{case}: number of metric rows changed"
    for g, w in zip(got["metrics"], want["metrics"]):
        assert sorted(g) == sorted(w), f"{case}: metric names changed at step {w.get('step')}"
        for k, v in w.items():
            assert g[k] == pytest.approx(v, rel=1e-4, abs=1e-6), \
                f"{case}: step {w.get('step')} {k} = {g[k]}, {family} record {v} (no {CPU} record)"


def _common(model_dir, out):
    return [f"model.name_or_path={model_dir}", "run.progress=false", f"run.output_dir={out}",
            "checkpoint.every_steps=2", "run.seed=7"]


def test_sft_golden(model_dir, data, tmp_path):
    from posttrain.recipes.sft import SFTConfig, main

    out = tmp_path / "sft"
    cfg = load_config(SFTConfig, None, _common(model_dir, out) + [
        f"data.paths=[{data['sft']}]", "train.batch_size=4", "train.micro_batch_tokens=64", "train.max_steps=3",
        "optim.lr=1e-3", "optim.warmup_ratio=0.0"])
    main(cfg)
    _check("sft", out, ["final"])


def test_sft_mean_loss_golden(model_dir, data, tmp_path):
    from posttrain.recipes.sft import SFTConfig, main

    out = tmp_path / "sft_mean"
    cfg = load_config(SFTConfig, None, _common(model_dir, out) + [
        f"data.paths=[{data['sft']}]", "train.batch_size=5", "train.micro_batch_tokens=80", "train.epochs=1",
        "train.loss_reduction=mean", "optim.lr=1e-3", "optim.schedule=cosine", "optim.max_grad_norm=0"])
    main(cfg)
    _check("sft_mean", out, ["final"])


def test_dpo_golden(model_dir, data, tmp_path):
    from posttrain.recipes.dpo import DPOConfig, main

    out = tmp_path / "dpo"
    cfg = load_config(DPOConfig, None, _common(model_dir, out) + [
        f"data.paths=[{data['pairs']}]", "data.eval_size=4", "train.batch_size=4",
        "train.micro_batch_tokens=96", "train.max_steps=3", "train.eval_every_steps=2", "train.eval_at_start=true",
        "optim.lr=1e-3", f"ref.cache_dir={tmp_path / 'refcache'}"])
    main(cfg)
    _check("dpo", out, ["final"])


def test_simpo_golden(model_dir, data, tmp_path):
    from posttrain.recipes.dpo import DPOConfig, main

    out = tmp_path / "simpo"
    cfg = load_config(DPOConfig, None, _common(model_dir, out) + [
        f"data.paths=[{data['pairs']}]", "loss.name=simpo", "loss.beta=2.0", "train.batch_size=6",
        "train.micro_batch_tokens=200", "train.max_steps=2", "optim.lr=1e-3"])
    main(cfg)
    _check("simpo", out, ["final"])


def test_rm_golden(model_dir, data, tmp_path):
    from posttrain.recipes.rm import RMConfig, main

    out = tmp_path / "rm"
    cfg = load_config(RMConfig, None, _common(model_dir, out) + [
        f"data.paths=[{data['pairs']}]", "data.eval_size=4", "train.batch_size=4",
        "train.micro_batch_tokens=96", "train.max_steps=3", "train.margin=0.5", "optim.lr=1e-3"])
    main(cfg)
    _check("rm", out, ["final"])


def _rlvr(model_dir, data, out, *extra):
    return _common(model_dir, out) + [
        f"data.paths=[{data['rlvr']}]", f"eval.paths=[{data['rlvr']}]", "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=4", "rollout.max_new_tokens=8", "optim.lr=2e-2", "kl.beta=0.01",
        "train.max_steps=3", *extra]


def test_grpo_golden(model_dir, data, tmp_path):
    from posttrain.recipes.rlvr import RLVRConfig, main

    out = tmp_path / "grpo"
    main(load_config(RLVRConfig, None, _rlvr(model_dir, data, out, "train.epochs=2", "train.num_minibatches=2",
                                             "eval.every_steps=2")))
    _check("grpo", out, ["final"])


def test_ppo_golden(model_dir, data, tmp_path):
    from posttrain.recipes.rlvr import RLVRConfig, main

    out = tmp_path / "ppo"
    main(load_config(RLVRConfig, None, _rlvr(model_dir, data, out, "algorithm=ppo", "kl.placement=reward",
                                             "kl.estimator=k1", "eval.at_start=false")))
    _check("ppo", out, ["final", "final_value"])
