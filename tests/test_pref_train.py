"""Preference training on tiny random models: packed pair log-probs, the reference cache, the
step's loss normalisation, `posttrain dpo` / `posttrain rm` end to end, crash + resume, score()."""

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, subprocess_env, tiny_model
from posttrain.config import load_config
from posttrain.data.preference import PreferencePair, pack_pairs, tokenize_pairs
from posttrain.losses.dpo import bind_preference_loss
from posttrain.train.dist import DistInfo
from posttrain.train.refcache import cache_key, model_fingerprint, pair_logps, reference_logps

U = lambda s: {"role": "user", "content": s}  # noqa: E731
A = lambda s: {"role": "assistant", "content": s}  # noqa: E731


def synthetic_rows(n: int) -> list[dict]:
    """Pairs with a learnable preference: the right sum beats a refusal."""
    rows = []
    for k in range(n):
        a, b = k % 7 + 1, k % 5 + 2
        rows.append({"prompt": f"What is {a} plus {b}?", "chosen": f"{a} plus {b} is {a + b}.",
                     "rejected": "I do not know." if k % 2 else f"Maybe {a * b + 1}? Not sure at all."})
    return rows


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP threads
    spinning against other jobs make them several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pref_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prefdata") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(40)))
    return str(path)


@pytest.fixture(scope="module")
def pairs(tokenizer):
    rows = [PreferencePair([U(r["prompt"])], [A(r["chosen"])], [A(r["rejected"])]) for r in synthetic_rows(4)]
    return tokenize_pairs(tokenizer, rows, 256)


def unpacked_logps(model, ex) -> torch.Tensor:
    ids = torch.tensor([ex.input_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)[:-1]
    tgt = torch.tensor(ex.labels[1:])
    mask = tgt != -100
    return logp[mask].gather(-1, tgt[mask][:, None]).sum()


def test_pair_logps_match_one_sequence_at_a_time(pairs):
    model = tiny_model().double()  # float64: packed and unpacked must agree to rounding
    sums, lengths = pair_logps(model, pack_pairs(pairs))
    assert sums.shape == lengths.shape == (len(pairs), 2)
    for i, p in enumerate(pairs):
        for j, ex in enumerate((p.chosen, p.rejected)):
            assert sums[i, j].item() == pytest.approx(unpacked_logps(model, ex).item(), rel=1e-9)
            assert lengths[i, j].item() == ex.num_trainable
    # gradients flow through the packed computation as through the unpacked one
    w = model.model.layers[0].mlp.up_proj.weight
    (g_packed,) = torch.autograd.grad(pair_logps(model, pack_pairs(pairs))[0].sum(), w)
    (g_single,) = torch.autograd.grad(sum(unpacked_logps(model, e) for p in pairs for e in (p.chosen, p.rejected)), w)
    assert torch.allclose(g_packed, g_single, rtol=1e-8, atol=1e-10)


def test_reference_cache_hit_miss_and_changed_key(tmp_path, tiny_model_dir):
    info = DistInfo()
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6, dtype=torch.float32).view(3, 2)

    key = cache_key(model=model_fingerprint(tiny_model_dir), pairs="abc", dtype="float32")
    a, hit = reference_logps(tmp_path, key, 3, compute, info, {"note": "t"}, log=lambda m: None)
    assert not hit and len(calls) == 1
    b, hit = reference_logps(tmp_path, key, 3, compute, info, {}, log=lambda m: None)
    assert hit and len(calls) == 1 and torch.equal(a, b)
    assert json.loads((tmp_path / f"ref_logps_{key}.json").read_text())["pairs"] == 3
    other = cache_key(model=model_fingerprint(tiny_model_dir), pairs="abd", dtype="float32")
    assert other != key
    reference_logps(tmp_path, other, 3, compute, info, {}, log=lambda m: None)
    assert len(calls) == 2
    # a file whose pair count does not match (stale, or a foreign file) is recomputed
    c, hit = reference_logps(tmp_path, key, 4, lambda: torch.zeros(4, 2), info, {}, log=lambda m: None)
    assert not hit and c.shape == (4, 2)
    # rewriting the weights changes the model fingerprint
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    before = model_fingerprint(str(model_dir))
    time.sleep(0.01)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes())
    assert model_fingerprint(str(model_dir)) != before


def test_step_gradient_is_the_mean_over_all_pairs_of_the_step(pairs):
    from posttrain.recipes.dpo import STAT_NAMES, preference_micro_batch
    from posttrain.train.pairs import pair_passes, plan_pairs

    loss_fn = bind_preference_loss("dpo", beta=0.5)
    ref = torch.randn(len(pairs), 2, generator=torch.Generator().manual_seed(0)) - 60.0
    idx = list(range(len(pairs)))

    def grads(budget):
        model = tiny_model().double()
        groups = plan_pairs(pairs, idx, budget)
        fn = preference_micro_batch(model, pairs, ref.double(), loss_fn, torch.device("cpu"))
        pair_passes(model, groups, len(groups), len(STAT_NAMES), DistInfo(), fn, n_pairs=len(idx))
        return len(groups), [p.grad.clone() for p in model.parameters()]

    biggest = max(p.num_tokens for p in pairs)
    n_small, small = grads(biggest)  # uneven micro-batches of one or two pairs
    n_one, one = grads(10_000)  # everything in one micro-batch
    assert n_small >= 3 and n_one == 1
    model = tiny_model().double()
    logps = torch.stack([torch.stack([unpacked_logps(model, p.chosen), unpacked_logps(model, p.rejected)])
                         for p in pairs])
    lengths = torch.tensor([[p.chosen.num_trainable, p.rejected.num_trainable] for p in pairs], dtype=torch.float64)
    ref = ref.double()
    out = loss_fn(policy_chosen_logps=logps[:, 0], policy_rejected_logps=logps[:, 1], ref_chosen_logps=ref[:, 0],
                  ref_rejected_logps=ref[:, 1], chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1])
    out.losses.mean().backward()
    for a, b, p in zip(small, one, model.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-7, atol=1e-12)
        assert torch.allclose(b, p.grad, rtol=1e-7, atol=1e-12)


def dpo_overrides(model_dir, data, out, cache, extra=()):
    return [f"model.name_or_path={model_dir}", f"data.paths=[{data}]", "data.max_length=128", "data.eval_size=8",
            "train.batch_size=8", "train.micro_batch_tokens=300", "train.max_steps=4", "optim.lr=1e-3",
            "optim.warmup_ratio=0", "loss.name=dpo", "loss.beta=0.5", "checkpoint.every_steps=2",
            "run.progress=false", f"run.output_dir={out}", f"ref.cache_dir={cache}", *extra]


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_dpo_run_logs_metrics_and_reuses_the_reference_cache(tiny_model_dir, pref_file, tmp_path):
    from posttrain.recipes.dpo import DPOConfig, main

    cache = tmp_path / "cache"
    main(load_config(DPOConfig, None, dpo_overrides(tiny_model_dir, pref_file, tmp_path / "a", cache)))
    first = rows(tmp_path / "a")
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "margin", "accuracy", "logps/chosen",
                "logps/rejected", "length/chosen", "length/rejected", "pairs_per_s", "grad_norm"):
        assert all(math.isfinite(r[key]) for r in first), key
    # policy == reference at step 1: every implicit reward is ~0 and the loss is log 2
    assert first[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(first[0]["rewards/chosen"]) < 1e-4 and first[0]["pairs"] == 8
    assert first[-1]["loss"] < first[0]["loss"]
    assert "eval/accuracy" in first[-1] and "eval/loss" in first[-1]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["ref_cache_hit"] is False and summary["eval_pairs"] == 8 and summary["train_pairs"] == 32
    assert len(list(cache.glob("ref_logps_*.pt"))) == 1

    main(load_config(DPOConfig, None, dpo_overrides(tiny_model_dir, pref_file, tmp_path / "b", cache)))
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["ref_cache_hit"] is True
    for r, s in zip(first, rows(tmp_path / "b")):
        assert r["loss"] == pytest.approx(s["loss"], rel=1e-6)
    # a different max length is a different key: recomputed, not reused
    main(load_config(DPOConfig, None, dpo_overrides(tiny_model_dir, pref_file, tmp_path / "c", cache,
                                                    ["data.max_length=40", "data.too_long=truncate"])))
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["ref_cache_hit"] is False
    assert len(list(cache.glob("ref_logps_*.pt"))) == 2

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "final") is not None


def test_simpo_runs_without_a_reference_pass(tiny_model_dir, pref_file, tmp_path):
    from posttrain.recipes.dpo import DPOConfig, main

    cfg = load_config(DPOConfig, None, dpo_overrides(tiny_model_dir, pref_file, tmp_path / "s", tmp_path / "cache",
                                                     ["loss.name=simpo", "loss.beta=2.0", "train.max_steps=2"]))
    main(cfg)
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["ref_cache_hit"] is None
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="does not take"):
        load_config(DPOConfig, None, ["loss.name=ipo", "loss.label_smoothing=0.1", "data.paths=[x]"]).loss.build()


@pytest.mark.slow
def test_killed_dpo_run_resumes_to_the_same_curve(tiny_model_dir, pref_file, tmp_path):
    from posttrain.recipes.dpo import DPOConfig, main

    steps = ["train.max_steps=8", "checkpoint.keep_last=5"]
    full = tmp_path / "full"
    main(load_config(DPOConfig, None, dpo_overrides(tiny_model_dir, pref_file, full, tmp_path / "c1", steps)))
    reference = rows(full)

    crashed = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "posttrain.cli", "dpo",
           *dpo_overrides(tiny_model_dir, pref_file, crashed, tmp_path / "c2", steps)]
    proc = subprocess.Popen(cmd, env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = crashed / "metrics.jsonl"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:  # kill between checkpoints 4 and 6
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # a crash: no clean-up code runs
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (crashed / "final").exists() and (crashed / "checkpoints" / "step_000004").exists()

    # The resumed policy is a checkpoint, so with the cache gone the reference model must be
    # loaded on its own: the curve must still match.
    for f in (tmp_path / "c2").glob("ref_logps_*"):
        f.unlink()
    main(load_config(DPOConfig, None, dpo_overrides(tiny_model_dir, pref_file, crashed, tmp_path / "c2",
                                                    [*steps, "run.resume=true"])))
    resumed = rows(crashed)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for r, s in zip(reference, resumed):
        for key in ("loss", "grad_norm", "lr", "margin", "eval/accuracy"):
            if key in r:
                assert s[key] == pytest.approx(r[key], rel=1e-5, abs=1e-7), (r["step"], key)


# ---------------------------------------------------------------- reward model

def test_score_matches_the_hf_classification_head(tiny_model_dir, tokenizer):
    from transformers import AutoModelForSequenceClassification

    from posttrain.data.preference import encode_conversation
    from posttrain.reward_model import load_reward_model, score

    model = load_reward_model(tiny_model_dir, tokenizer).eval()
    convs = [[U("Hi"), A("Hello there, how can I help?")], [U("2+2?"), A("4")],
             [U("Name a colour"), A("Blue."), U("Another"), A("Red, or green.")]]
    ours = score(model, tokenizer, convs, micro_batch_tokens=64)
    ids = [encode_conversation(tokenizer, c)[1] for c in convs]
    width = max(map(len, ids))
    padded = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids])
    mask = (torch.arange(width)[None] < torch.tensor([len(x) for x in ids])[:, None]).long()
    # what a user of the checkpoint runs: the plain HF class on a right-padded batch
    hf_model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    hf_model.score.weight.data.copy_(model.score.weight.data)
    with torch.no_grad():
        hf = hf_model(input_ids=padded, attention_mask=mask).logits[:, 0]
    assert ours == pytest.approx(hf.tolist(), rel=1e-4, abs=1e-5)
    assert score(model, tokenizer, [tokenizer.apply_chat_template(convs[1], tokenize=False)]) == \
        pytest.approx(ours[1:2], rel=1e-5)


def test_rm_run_learns_and_saves_a_sequence_classifier(tiny_model_dir, pref_file, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from posttrain.recipes.rm import RMConfig, main
    from posttrain.reward_model import score

    out = tmp_path / "rm"
    cfg = load_config(RMConfig, None, [
        f"model.name_or_path={tiny_model_dir}", f"data.paths=[{pref_file}]", "data.max_length=128",
        "data.eval_size=8", "train.batch_size=8", "train.micro_batch_tokens=600", "train.max_steps=12",
        "optim.lr=3e-3", "optim.warmup_ratio=0", "run.progress=false", f"run.output_dir={out}"])
    main(cfg)
    r = rows(out)
    assert len(r) == 12 and all(k in r[0] for k in ("loss", "accuracy", "margin", "rewards/chosen", "length/chosen"))
    first, last = sum(x["loss"] for x in r[:3]) / 3, sum(x["loss"] for x in r[-3:]) / 3
    assert last < first and r[-1]["accuracy"] > 0.8  # the pattern is easy to learn
    summary = json.loads((out / "summary.json").read_text())
    assert "eval/accuracy" in summary["eval_start"] and summary["eval_end"]["eval/accuracy"] > 0.5

    loaded = AutoModelForSequenceClassification.from_pretrained(out / "final")
    assert loaded.config.num_labels == 1 and loaded.config.pad_token_id == tokenizer.pad_token_id
    good = [U("What is 3 plus 4?"), A("3 plus 4 is 7.")]
    bad = [U("What is 3 plus 4?"), A("I do not know.")]
    chosen, rejected = score(loaded, tokenizer, [good, bad])
    assert chosen > rejected
