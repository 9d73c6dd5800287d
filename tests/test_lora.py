"""LoRA / DoRA / rsLoRA through peft in every stage: merging, SFT (exact resume), DPO (the reference
is the base with adapters off; the reference cache is shared with full fine-tuning), reward models
(adapter + trained head), RLVR (the generator samples with the current adapters: its log-probs
match the trainer's), `posttrain merge`, adapter directories as inputs, QLoRA's CPU error."""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from posttrain.config import load_config
from posttrain.train.lora import LoraConfig, apply_lora, merged_state_dict
from posttrain.train.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from test_pref_train import dpo_overrides, pref_file  # noqa: E402,F401  (the module-scoped fixture)
from test_rlvr_recipe import ROWS, overrides as rlvr_overrides  # noqa: E402

TIMING = ("time/", "elapsed_s", "samples_per_s", "tokens_per_s", "pairs_per_s")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize_adapters(model, seed=0):
    """Fresh LoRA B matrices are zero (the adapter starts as the identity); make them count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            if "magnitude" in name:
                p.mul_(1.0 + torch.rand(p.shape, generator=g))


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora"])
def test_merged_state_dict_equals_the_adapter_model(variant):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=128)
    model = apply_lora(LlamaForCausalLM(cfg), LoraConfig(enabled=True, r=4, alpha=8, use_rslora=variant == "rslora",
                                                         use_dora=variant == "dora"))
    randomize_adapters(model)
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        plain = LlamaForCausalLM(cfg)
        plain.load_state_dict(merged_state_dict(model), strict=True)
        got = plain(input_ids=ids).logits
    assert (got - expected).abs().max() < 1e-5
    # the live weights are untouched: the adapters still add their update on the fly
    with torch.no_grad(), model.disable_adapter():
        assert (model(input_ids=ids).logits - expected).abs().max() > 1e-3


def test_reward_adapter_trains_the_head_in_full_and_merges():
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=128)
    cfg.num_labels = 1
    model = apply_lora(LlamaForSequenceClassification(cfg), LoraConfig(enabled=True, r=4), task="reward")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n and "modules_to_save" in n for n in trainable)
    assert not any("embed_tokens" in n or n.endswith("norm.weight") for n in trainable)
    randomize_adapters(model)
    ids = torch.randint(3, 128, (1, 7))
    plain = LlamaForSequenceClassification(cfg)
    plain.load_state_dict(merged_state_dict(model), strict=True)
    with torch.no_grad():
        assert (plain(input_ids=ids).logits - model(input_ids=ids).logits).abs().max() < 1e-5


def sft_overrides(model_dir, out, *extra):
    from conftest import shared

    return [f"model.name_or_path={model_dir}", f"data.paths=[{shared('sft/open_instruct_sft_sample.jsonl')}]",
            "data.limit=24", "data.max_length=160", "data.too_long=truncate", "train.batch_size=4",
            "train.micro_batch_tokens=400", "train.max_steps=6", "checkpoint.every_steps=3", "optim.lr=1e-2",
            "run.progress=false", f"run.output_dir={out}", "model.lora.enabled=true", "model.lora.r=8",
            "model.lora.alpha=16", *extra]


def curve(run_dir):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in read_metrics(run_dir)]


def resume_from_copy(src: Path, dst: Path, step: int) -> None:
    """A run that stopped after `step`: the checkpoint and the rows logged up to it, nothing else."""
    (dst / "checkpoints").mkdir(parents=True)
    name = f"step_{step:06d}"
    shutil.copytree(src / "checkpoints" / name, dst / "checkpoints" / name)
    rows = [r for r in (src / "metrics.jsonl").read_text().splitlines() if json.loads(r)["step"] <= step]
    (dst / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))


def test_sft_lora_saves_adapter_and_merged_model_and_resumes_exactly(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from posttrain.recipes.sft import SFTConfig, main

    full = tmp_path / "full"
    main(load_config(SFTConfig, None, sft_overrides(tiny_model_dir, full)))
    rows = curve(full)
    assert [r["step"] for r in rows] == list(range(1, 7)) and rows[-1]["loss"] < rows[0]["loss"]
    summary = json.loads((full / "summary.json").read_text())
    assert 0 < summary["trainable_params"] < summary["total_params"] / 10
    ckpt = full / "checkpoints" / "step_000003"
    assert (ckpt / "adapter_config.json").is_file() and (ckpt / "trainer_state.pt").is_file()
    assert not (ckpt / "config.json").exists()  # the adapter only, not a second copy of the base

    # final/ is plain (no peft needed) and equals base + final_adapter/
    ids = torch.tensor([[1, 500, 600, 700, 800]])
    merged = AutoModelForCausalLM.from_pretrained(full / "final").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                        full / "final_adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        a, b, c = (m(input_ids=ids).logits for m in (merged, adapted, base))
    assert (a - b).abs().max() < 1e-5 and (a - c).abs().max() > 1e-3
    base_sd, merged_sd = base.state_dict(), merged.state_dict()
    assert torch.equal(base_sd["model.embed_tokens.weight"], merged_sd["model.embed_tokens.weight"])  # frozen
    assert not torch.equal(base_sd["model.layers.0.mlp.down_proj.weight"],
                           merged_sd["model.layers.0.mlp.down_proj.weight"])  # all-linear adapted

    resumed = tmp_path / "resumed"
    resume_from_copy(full, resumed, 3)
    main(load_config(SFTConfig, None, sft_overrides(tiny_model_dir, resumed, "run.resume=true")))
    assert curve(resumed) == rows  # exact, as for full fine-tuning
    from safetensors.torch import load_file

    x, y = (load_file(d / "final_adapter" / "adapter_model.safetensors") for d in (full, resumed))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_an_adapter_directory_is_a_model_input_and_merge_cli_writes_a_plain_copy(tiny_model_dir, tmp_path):
    from posttrain.cli import main as cli
    from posttrain.models import load_model, load_tokenizer
    from posttrain.recipes.sft import SFTConfig, main

    run = tmp_path / "sft"
    main(load_config(SFTConfig, None, sft_overrides(tiny_model_dir, run, "train.max_steps=2",
                                                    "checkpoint.every_steps=0", "model.lora.use_dora=true")))
    ids = torch.tensor([[1, 50, 60, 70]])
    direct = load_model(run / "final_adapter").eval()  # base + adapter, merged on load
    merged = load_model(run / "final").eval()
    assert load_tokenizer(run / "final_adapter").chat_template
    assert cli(["merge", str(run / "final_adapter"), str(tmp_path / "merged")]) == 0
    via_cli = load_model(tmp_path / "merged").eval()
    with torch.no_grad():
        ref = merged(input_ids=ids).logits
        for m in (direct, via_cli):
            assert (m(input_ids=ids).logits - ref).abs().max() < 1e-5
    assert cli(["merge", str(run / "final"), str(tmp_path / "again")]) == 2  # not an adapter: one-line error


def test_dpo_lora_reference_is_the_base_with_adapters_off(tiny_model_dir, pref_file, tmp_path):  # noqa: F811
    from posttrain.recipes.dpo import DPOConfig, main

    cache = tmp_path / "cache"
    lora = ["model.lora.enabled=true", "model.lora.r=8", "optim.lr=5e-3"]
    main(load_config(DPOConfig, None, dpo_overrides(tiny_model_dir, pref_file, tmp_path / "full", cache)))
    run = tmp_path / "lora"
    main(load_config(DPOConfig, None, dpo_overrides(tiny_model_dir, pref_file, run, cache, lora)))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ref_cache_hit"] is True  # the same base: full fine-tuning's cached reference is reused
    rows = curve(run)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 1
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["margin"] > 0

    # Resumed with the cache gone: the reference is recomputed from the resumed adapter model with its
    # adapters off, and must be the original base's, so the curve continues unchanged.
    for f in cache.glob("ref_logps_*"):
        f.unlink()
    resumed = tmp_path / "resumed"
    resume_from_copy(run, resumed, 2)
    main(load_config(DPOConfig, None, dpo_overrides(tiny_model_dir, pref_file, resumed, cache,
                                                    [*lora, "run.resume=true"])))
    for r, s in zip(rows, curve(resumed)):
        for key in ("loss", "grad_norm", "margin", "eval/accuracy"):
            if key in r:
                assert s[key] == pytest.approx(r[key], rel=1e-5, abs=1e-7), (r["step"], key)


def test_rm_lora_learns_and_saves_a_plain_classifier(tiny_model_dir, pref_file, tokenizer, tmp_path):  # noqa: F811
    from transformers import AutoModelForSequenceClassification

    from posttrain.recipes.rm import RMConfig, main
    from posttrain.reward_model import load_reward_model, score

    out = tmp_path / "rm"
    main(load_config(RMConfig, None, [
        f"model.name_or_path={tiny_model_dir}", f"data.paths=[{pref_file}]", "data.max_length=128",
        "data.eval_size=8", "train.batch_size=8", "train.micro_batch_tokens=600", "train.max_steps=12",
        "optim.lr=1e-2", "optim.warmup_ratio=0", "run.progress=false", f"run.output_dir={out}",
        "model.lora.enabled=true", "model.lora.r=8"]))
    rows = curve(out)
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3]) and rows[-1]["accuracy"] > 0.8
    plain = AutoModelForSequenceClassification.from_pretrained(out / "final")
    from_adapter = load_reward_model(out / "final_adapter", tokenizer)
    convs = [[{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "3 plus 4 is 7."}],
             [{"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "I do not know."}]]
    a, b = score(plain, tokenizer, convs), score(from_adapter, tokenizer, convs)
    assert a == pytest.approx(b, abs=1e-4) and a[0] > a[1]


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rlvr-lora") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


@pytest.mark.parametrize("generation", ["merged", "adapter"])
def test_rlvr_lora_generates_with_the_current_adapters(tiny_model_dir, rows_file, tmp_path, generation):
    from posttrain.recipes.rlvr import RLVRConfig, main

    out = tmp_path / generation
    main(load_config(RLVRConfig, None, rlvr_overrides(
        tiny_model_dir, rows_file, out, "train.max_steps=5", "optim.lr=5e-2", "model.lora.enabled=true",
        "model.lora.r=8", f"model.lora.generation={generation}", "train.filter_constant_groups=false",
        *(["rollout.engine_backend=hf"] if generation == "adapter" else []))))
    rows = read_metrics(out)
    trained = [r for r in rows if "logprob_diff/mean_abs" in r]
    assert len(trained) == 5
    # The KL to the reference (the base, adapters off) grows from 0: the adapters are training.
    assert trained[0]["kl/k3"] == pytest.approx(0.0, abs=1e-6) and trained[-1]["kl/k3"] > 1e-4
    # Sampling with stale weights would show here as a gap after the first update: the merged copy
    # (fast path) and the live adapter model (HF path) both agree with the trainer as under full
    # fine-tuning (< 1e-3, tests/test_rlvr_recipe.py).
    assert max(r["logprob_diff/mean_abs"] for r in trained) < 1e-3
    assert (out / "final" / "config.json").is_file() and (out / "final_adapter" / "adapter_config.json").is_file()


def test_ppo_lora_trains_policy_and_value_adapters(tiny_model_dir, rows_file, tmp_path):
    from posttrain.recipes.rlvr import RLVRConfig, main

    out = tmp_path / "ppo"
    main(load_config(RLVRConfig, None, rlvr_overrides(
        tiny_model_dir, rows_file, out, "algorithm=ppo", "rollout.samples_per_prompt=2", "train.max_steps=2",
        "kl.placement=reward", "kl.estimator=k1", "kl.beta=0.05", "ppo.value_lr=1e-3", "model.lora.enabled=true")))
    rows = read_metrics(out)
    assert len(rows) == 2 and all("loss/value" in r for r in rows)
    for name in ("final", "final_value"):
        assert (out / name / "config.json").is_file() and (out / f"{name}_adapter" / "adapter_config.json").is_file()


def test_lora_config_errors_are_clear(tiny_model_dir, tmp_path):
    from posttrain.recipes.rlvr import RLVRConfig
    from posttrain.recipes.sft import SFTConfig
    from posttrain.train.common import ModelConfig, load_for_training
    from posttrain.train.dist import DistInfo

    with pytest.raises(ValueError, match="needs model.lora.enabled"):
        load_config(SFTConfig, None, ["data.paths=[x]", "model.lora.load_in_4bit=true"])
    with pytest.raises(ValueError, match="RLVR needs 0"):
        load_config(RLVRConfig, None, ["data.paths=[x]", "model.lora.enabled=true", "model.lora.dropout=0.1"])
    with pytest.raises(ValueError, match="all-linear cannot be combined"):
        load_config(SFTConfig, None, ["data.paths=[x]", "model.lora.enabled=true",
                                      "model.lora.target_modules=[all-linear,q_proj]"])
    mcfg = ModelConfig(name_or_path=tiny_model_dir, lora=LoraConfig(enabled=True, load_in_4bit=True))
    with pytest.raises(ValueError, match=r"QLoRA\) needs a CUDA GPU"):
        load_for_training(mcfg, DistInfo(), torch.float32)
    if not torch.cuda.is_available():  # the config check says it before anything is written
        from posttrain.cli import main as cli

        out = tmp_path / "q"
        assert cli(["sft", *sft_overrides(tiny_model_dir, out, "model.lora.load_in_4bit=true")]) == 2
        assert not out.exists()


@pytest.mark.slow
def test_pipeline_hands_merged_lora_checkpoints_between_stages(tiny_model_dir, pref_file, tmp_path):  # noqa: F811
    """SFT and DPO both train adapters; DPO starts from (and is referenced against) SFT's merged
    model, the evaluation scores the merged models, and each stage also leaves its adapter."""
    from conftest import REPO, shared
    from posttrain.recipes.pipeline import PipelineConfig, run_pipeline

    out = tmp_path / "run"
    lora = ["model.lora.enabled=true", "model.lora.r=8", "optim.lr=5e-3", "run.progress=false"]
    cfg = load_config(PipelineConfig, REPO / "recipes" / "demo.yaml", [
        f"output_dir={out}", f"base_model={tiny_model_dir}", "stages=[sft,dpo,eval]", "eval.tasks=[gsm8k]",
        "eval.limit=2", "eval.max_new_tokens=4", "eval.models=[base,sft,dpo]", "eval.task_limits={}",
        "eval.task_max_new_tokens={}", "eval.task_models={}", "eval.targets={}", "sft.heldout=0", "dpo.heldout=0"])
    cfg.sft.overrides = [f"data.paths=[{shared('sft/open_instruct_sft_sample.jsonl')}]", "data.limit=8",
                         "data.max_length=128", "data.too_long=truncate", "train.batch_size=4", "train.max_steps=2",
                         "train.micro_batch_tokens=512", *lora]
    cfg.dpo.overrides = [f"data.paths=[{pref_file}]", "data.max_length=128", "data.eval_size=4", "train.batch_size=4",
                         "train.max_steps=2", "train.micro_batch_tokens=600", "loss.name=dpo", "loss.beta=0.5",
                         f"ref.cache_dir={tmp_path / 'cache'}", *lora]
    cfg.recipe_dir = str(REPO)
    run_pipeline(cfg)
    for stage in ("sft", "dpo"):
        assert (out / stage / "final" / "config.json").is_file()  # plain, merged
        assert (out / stage / "final_adapter" / "adapter_config.json").is_file()
    dpo_cfg = (out / "dpo" / "config.yaml").read_text()
    assert f"name_or_path: {out / 'sft' / 'final'}" in dpo_cfg
    adapter_cfg = json.loads((out / "dpo" / "final_adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(out / "sft" / "final")  # stacked on SFT's merge
    dpo_rows = curve(out / "dpo")
    assert dpo_rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # reference = SFT's model
    table = json.loads((out / "eval" / "table.json").read_text())
    assert set(table) == {"base", "sft", "dpo"}
