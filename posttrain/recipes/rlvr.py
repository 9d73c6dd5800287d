"""RL with verifiable rewards (`posttrain rlvr`): GRPO and its variants, RLOO, REINFORCE++ or PPO,
readable top to bottom (`algorithm`, rl/algorithms.py; docs/RL_ALGORITHMS.md).

One step: P prompts × k samples from the generation engine (sync: the policy itself; async: a
generator thread holding its own copy, one step behind; single-turn, or multi-turn with tools) →
verifier rewards → advantages (group baselines: GRPO / Dr. GRPO / DAPO / GSPO / RLOO, constant
groups filtered; per-token returns: REINFORCE++, PPO with GAE on a value model, KL as a per-token
reward penalty) → clipped policy-gradient updates with separate ε_low/ε_high, truncated importance
sampling between the generator's and the trainer's log-probs, and (GRPO) a KL loss term →
metrics, held-out evaluation, checkpoints. Sync mode is exactly reproducible, so a resumed run
continues the same curve.

Under torchrun the policy (and reference and value models) are FSDP2-sharded for training, and
each rank generates with its own unsharded copy of the policy, refreshed from the shards after
every update: rank r samples the prompts at positions r, r + world, ... of the step, with the
random streams those positions have in one process, and the shards are gathered so every rank
holds the whole batch (same advantages, filters and token counts everywhere). Evaluation runs on
rank 0. Two processes reproduce the one-process run (tests/test_rlvr_distributed.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from posttrain.data.chat import LoadStats
from posttrain.data.rlvr import load_rlvr_rows
from posttrain.models import load_tokenizer
from posttrain.rl.advantages import ppo_advantages, ppo_token_rewards, reinforce_pp_advantages, select_groups
from posttrain.rl import ray_rlvr
from posttrain.rl.async_worker import AsyncRolloutWorker
from posttrain.rl.buffer import TrainSamples, per_sample_to_tokens
from posttrain.rl.config import (KLConfig, PPOConfig, RewardConfig, RLVRConfig, RLVRData, RLVREval,  # noqa: F401
                                 RLVRTrain, RolloutConfig)
from posttrain.evaluation.heldout import evaluate_prompts
from posttrain.rl.algorithms import group_advantages, policy_loss, uses_dynamic_sampling
from posttrain.rl.multiturn import MultiTurnSettings
from posttrain.rl.rewards import RewardModelScorer
from posttrain.rl.rollouts import (Prompt, RolloutBatch, RolloutSettings, encode_prompts, generate_rollouts,
                                   merge_rollouts)
from posttrain.rl.update import PassSettings, PolicyLoss, policy_update, score_logprobs, score_values, value_update
from posttrain.generation import Engine
from posttrain.generation.vllm_engine import make_engine as build_engine
from posttrain.train.common import load_for_training
from posttrain.train.dist import DistInfo
from posttrain.train.loop import (Row, Run, Trainable, build_optimization, eval_every, finish, log_to, metrics_logger,
                                  open_run_dir, restore, resume_point, save_every, start_run, step_indices, train_loop)
from posttrain.train.lora import apply_lora, is_peft, merged_state_dict, plain_copy, reference_view
from posttrain.train.optim import build_optimizer
from posttrain.train.parallel import copy_full_weights, full_state_dict, parallelize


# ---------------------------------------------------------------- building blocks

def load_prompts(paths: list[str], data: RLVRData, tokenizer, log, limit: int | None,
                 system: str | None = None) -> list[Prompt]:
    prompts, stats = [], LoadStats()
    for path in paths:  # file by file, so that prompts dropped as too long count against their file
        rows = load_rlvr_rows(path, limit, data.on_error, stats, data.gsm8k_instruction)
        prompts += encode_prompts(tokenizer, rows, data.max_prompt_length, stats, system)
    stats.report(log, f"{', '.join(paths)}: {stats.summary()}", len(prompts), "prompts")
    return prompts


def load_value_model(cfg: RLVRConfig, tokenizer, dtype, device, resume_from: Path | None = None):
    """A scalar-head model (`AutoModelForSequenceClassification`) from a reward model, or from the
    policy's checkpoint with a new head; same attention implementation as the policy. Under LoRA it
    gets its own adapters (and a fully trained head) on the same frozen-base recipe; its state is
    restored from the checkpoint's trainer state on resume, like a fully trained value model."""
    from posttrain.reward_model import load_reward_model

    model = load_reward_model(cfg.ppo.value_model or cfg.model.name_or_path, tokenizer, dtype, device,
                              attn_implementation=cfg.model.attn_implementation)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if cfg.model.lora.enabled:
        model = apply_lora(model, cfg.model.lora, "reward", cfg.model.gradient_checkpointing)
    return model


def frozen(model):
    model.eval().requires_grad_(False)
    return model


def reference_and_old(samples: TrainSamples, policy, ref, need_old: bool, cfg: RLVRConfig, device,
                      info: DistInfo) -> None:
    """Reference log-probs (no gradients kept) and, when needed, π_old before any update."""
    s = (cfg.train.micro_batch_tokens, cfg.rollout.temperature, device, info, cfg.train.share_prompts)
    if ref is not None:
        samples.set("ref_logprobs", score_logprobs(ref, samples, *s))
    if need_old:
        samples.set("old_logprobs", score_logprobs(policy, samples, *s))


def train_samples(batch: RolloutBatch, keep: list[int]) -> TrainSamples:
    samples = TrainSamples([batch.prompt_ids[i] for i in keep], [batch.response_ids[i] for i in keep])
    samples.set("gen_logprobs", [torch.tensor(batch.gen_logprobs[i]) for i in keep])
    if batch.loss_masks is not None:  # multi-turn: tool output is context, not the policy's tokens
        samples.set("loss_mask", [torch.tensor(batch.loss_masks[i], dtype=torch.float32) for i in keep])
    return samples


def grpo_step(cfg, batch, policy, ref, optimizer, loss: PolicyLoss, passes: PassSettings, device, info,
              **_) -> dict:
    """Every group-baseline algorithm (grpo, dr_grpo, dapo, gspo, rloo): its advantages, then the
    constant groups filtered; the loss's ratio and normaliser come with `loss`."""
    sel = select_groups(group_advantages(cfg)(batch.rewards, batch.group_size), cfg.train.filter_constant_groups)
    stats = {"groups/total": sel.num_groups, "groups/constant": sel.num_constant_groups,
             "groups/filtered": sel.num_constant_groups if cfg.train.filter_constant_groups else 0,
             "samples/trained": len(sel.keep)}
    if not sel.keep:  # every group constant: no signal this step
        return stats
    samples = train_samples(batch, sel.keep)
    samples.set("advantages", per_sample_to_tokens(sel.advantages[sel.keep], samples.response_lengths))
    reference_and_old(samples, policy, ref, not passes.single_pass, cfg, device, info)
    return stats | policy_update(policy, optimizer, samples, loss, passes, device, info)


def ppo_step(cfg, batch, policy, ref, optimizer, loss: PolicyLoss, passes: PassSettings, device, info, *,
             value_model, value_optimizer) -> dict:
    samples = train_samples(batch, list(range(batch.num_samples)))
    kl_in_reward = bool(cfg.kl.reward_beta) and ref is not None
    reference_and_old(samples, policy, ref, kl_in_reward or not passes.single_pass, cfg, device, info)
    values = score_values(value_model, samples, cfg.train.micro_batch_tokens, device, info)
    masks = samples.token.get("loss_mask")
    token_rewards = ppo_token_rewards(batch.rewards, samples.response_lengths, samples.token.get("old_logprobs"),
                                      samples.token.get("ref_logprobs"), cfg.kl.reward_beta if kl_in_reward else 0.0,
                                      cfg.kl.estimator, masks)
    adv, returns = ppo_advantages(token_rewards, values, cfg.ppo.gamma, cfg.ppo.lam, cfg.ppo.whiten_advantages, masks)
    samples.set("advantages", adv)
    samples.set("returns", returns)
    samples.set("old_values", values)
    stats = {"samples/trained": len(samples), "value/mean": torch.cat(values).mean().item(),
             "returns/mean": torch.cat(returns).mean().item()}
    stats |= policy_update(policy, optimizer, samples, loss, passes, device, info)
    return stats | value_update(value_model, value_optimizer, samples, cfg.ppo.value_clip, cfg.ppo.value_coef,
                                passes, device, info)


def reinforce_pp_step(cfg, batch, policy, ref, optimizer, loss: PolicyLoss, passes: PassSettings, device, info,
                      **_) -> dict:
    """REINFORCE++: per-token rewards (−β·KL_t with kl.placement=reward, the reward on the last
    token), their returns normalised over the batch's tokens; no value model, no group baseline."""
    samples = train_samples(batch, list(range(batch.num_samples)))
    kl_in_reward = bool(cfg.kl.reward_beta) and ref is not None
    reference_and_old(samples, policy, ref, kl_in_reward or not passes.single_pass, cfg, device, info)
    masks = samples.token.get("loss_mask")
    token_rewards = ppo_token_rewards(batch.rewards, samples.response_lengths, samples.token.get("old_logprobs"),
                                      samples.token.get("ref_logprobs"), cfg.kl.reward_beta if kl_in_reward else 0.0,
                                      cfg.kl.estimator, masks)
    samples.set("advantages", reinforce_pp_advantages(token_rewards, masks=masks))
    return {"samples/trained": len(samples)} | policy_update(policy, optimizer, samples, loss, passes, device, info)


def run_evals(engine, sets: dict[str, list[Prompt]], cfg: RLVRConfig, log) -> dict[str, float]:
    out = {}
    tools = MultiTurnSettings.from_config(cfg.rollout) if cfg.eval.tools else None
    for name, prompts in sets.items():
        res = evaluate_prompts(engine, prompts, cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                               cfg.rollout.stop, tools)
        out |= {f"eval/{name}/{k}": v for k, v in res.items()}
        log(f"[eval] {name}: accuracy {res['accuracy']:.3f} over {len(prompts)} prompts")
    return out


def append_samples(run_dir: Path, samples: list[dict], truncate_after: int | None = None) -> None:
    path = run_dir / "samples.jsonl"
    if truncate_after is not None and path.is_file():  # on resume: one history, as metrics.jsonl
        rows = [r for r in path.read_text().splitlines() if r.strip() and json.loads(r)["step"] <= truncate_after]
        path.write_text("".join(r + "\n" for r in rows))
    with open(path, "a") as fh:
        for s in samples:
            fh.write(json.dumps(s, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- the recipe

@dataclasses.dataclass
class Models:
    """Everything with weights in one RLVR run."""

    policy: Any  # trained (FSDP2-sharded under torchrun)
    generator: Any  # samples: the policy itself in one process; an unsharded copy per rank under FSDP
    ref: Any  # frozen reference (None when kl.beta = 0)
    parts: list[Trainable]  # checkpointed with their optimizers: the policy, then PPO's value model
    rm: RewardModelScorer | None

    @property
    def value(self) -> dict:
        """PPO's step arguments (empty for GRPO)."""
        if len(self.parts) < 2:
            return {}
        return {"value_model": self.parts[1].model, "value_optimizer": self.parts[1].optimizer}


def build_models(cfg: RLVRConfig, run: Run, tokenizer, resume_from: Path | None, total_steps: int) -> Models:
    info, dtype = run.info, run.dtype
    policy = load_for_training(cfg.model, info, dtype, init_from=str(resume_from) if resume_from else None)
    generator = policy
    live_adapters = cfg.model.lora.generation == "adapter" or cfg.model.lora.load_in_4bit  # QLoRA: never merged
    if is_peft(policy) and live_adapters and info.distributed:
        raise ValueError("model.lora.generation=adapter (and QLoRA) generate with the training model itself, "
                         "which under torchrun is sharded: use model.lora.generation=merged")
    if is_peft(policy) and not live_adapters:
        generator = frozen(plain_copy(policy))  # refreshed from the adapters after every step
    elif info.distributed:
        generator = frozen(copy.deepcopy(policy))
    policy = parallelize(policy, info)
    parts = [Trainable("policy", policy, *build_optimization(policy, cfg.optim, total_steps))]
    ref = None
    if cfg.kl.beta > 0 and is_peft(policy) and cfg.kl.reference in (None, cfg.model.name_or_path):
        ref = reference_view(policy)  # the base under the adapters: no second copy of the weights
    elif cfg.kl.beta > 0:  # always the original weights, also when resuming
        ref_cfg = dataclasses.replace(cfg.model, name_or_path=cfg.kl.reference or cfg.model.name_or_path,
                                      gradient_checkpointing=False)
        ref = parallelize(frozen(load_for_training(ref_cfg, info, dtype, reference=True)), info)
    if cfg.algorithm == "ppo":
        value_model = load_value_model(cfg, tokenizer, dtype, info.device, resume_from)
        value_model = parallelize(value_model, info)
        value_optimizer = build_optimizer(value_model, cfg.ppo.value_lr or cfg.optim.lr, cfg.optim.weight_decay,
                                          (cfg.optim.beta1, cfg.optim.beta2), cfg.optim.eps)
        parts.append(Trainable("value", value_model.train(), value_optimizer))
    rm = RewardModelScorer(cfg.reward.rm_model, dtype, info.device) if cfg.reward.rm_weight else None
    return Models(policy, generator, ref, parts, rm)


def main(cfg: RLVRConfig) -> Path:
    if ray_rlvr.hands_off(cfg):  # distributed.engine=ray: Ray actors run this function as the learners
        return ray_rlvr.launch(cfg, main)
    run = start_run(cfg, "rlvr")
    info, log = run.info, run.log
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.chat_template)
    prompts, eval_sets, final_sets = load_all_prompts(cfg, tokenizer, info, log)
    P = cfg.rollout.prompts_per_step
    steps_per_epoch = len(prompts) // P
    total_steps = cfg.train.max_steps or steps_per_epoch

    open_run_dir(run, cfg)
    resume_from = resume_point(run, cfg)
    m = build_models(cfg, run, tokenizer, resume_from, total_steps)
    policy, optimizer, scheduler = m.policy, m.parts[0].optimizer, m.parts[0].scheduler
    start_step = restore(run, resume_from, m.parts, total_steps)

    def make_engine(model):
        backend = "vllm" if cfg.rollout.backend == "vllm" else cfg.rollout.engine_backend
        return build_engine(backend, model, tokenizer, max_batch_size=cfg.rollout.engine_max_batch_size,
                            vllm=cfg.rollout.vllm, config_key="rollout.backend")

    engine = make_engine(m.generator)  # sync rollouts and evaluation
    settings = RolloutSettings.from_config(cfg.rollout, cfg.reward, uses_dynamic_sampling(cfg.algorithm, False))

    def produce(eng, step: int, version: int) -> RolloutBatch:
        """This rank's share of the step's batch (all of it in one process)."""
        idx = step_indices(len(prompts), P, step, steps_per_epoch, cfg.run.seed)
        return generate_rollouts(eng, prompts, idx, step, version, cfg.run.seed, settings, m.rm,
                                 shard=(info.rank, info.world_size))

    pool = ray_rlvr.learner_pool(cfg, prompts, start_step, total_steps, m.generator)  # a Ray learner: its rollouts
    worker = pool or (async_worker(cfg, make_engine(frozen(copy.deepcopy(m.generator))), produce, start_step,
                                   total_steps) if cfg.rollout.mode == "async" else None)

    # The loss and the step function are picked once, here.
    loss = policy_loss(cfg)
    step_algorithm = {"ppo": ppo_step, "reinforce_pp": reinforce_pp_step}.get(cfg.algorithm, grpo_step)
    t_start = time.time()

    def step_fn(step: int) -> Row:
        t0 = time.perf_counter()
        if pool:  # every rank gets the whole batch from the Ray generators
            batch = pool.get(step)
        else:
            batch = gather_batch(worker.get(step) if worker else produce(engine, step, step), info)
        t1 = time.perf_counter()
        passes = PassSettings(cfg.train.epochs, cfg.train.num_minibatches, cfg.train.micro_batch_tokens,
                              cfg.optim.max_grad_norm, seed=cfg.run.seed * 100003 + step,
                              share_prompts=cfg.train.share_prompts)
        lr = scheduler.get_last_lr()[0]
        stats = step_algorithm(cfg, batch, policy, m.ref, optimizer, loss, passes, info.device, info, **m.value)
        with warnings.catch_warnings():  # a step whose groups were all filtered made no update
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            scheduler.step()
        if m.generator is not policy:  # the sync generator follows the shards, or the merged adapters
            refresh_generator(m.generator, policy, info)
        if cfg.rollout.backend == "vllm":  # vLLM holds its own copy of the weights (merged under LoRA)
            engine.update_weights(m.generator.state_dict())
        if worker and step + 1 <= worker.last_needed_version:
            worker.push_weights(step + 1, m.generator if pool else generator_state(m.generator, policy, info))
        t2 = time.perf_counter()
        if info.is_main:
            append_samples(run.run_dir, batch.samples)
        return batch.stats() | stats | step_timing(batch, step, lr, t0, t1, t2) | {"elapsed_s": time.time() - t_start}

    logger = metrics_logger(run, cfg, total_steps, start_step)
    if info.is_main:
        append_samples(run.run_dir, [], truncate_after=start_step)
    callbacks = [  # evaluation, metrics and samples are rank 0's
        eval_every(cfg.eval.every_steps, total_steps, lambda: run_evals(engine, eval_sets, cfg, log),
                   enabled=info.is_main and bool(eval_sets)),
        eval_every(0, total_steps, lambda: run_evals(engine, final_sets, cfg, log),
                   enabled=info.is_main and bool(final_sets)),
        log_to(logger), save_every(run, cfg, total_steps, tokenizer, m.parts)]
    try:
        if start_step == 0 and cfg.eval.at_start and (eval_sets or final_sets) and info.is_main:
            logger.log(0, run_evals(engine, eval_sets | final_sets, cfg, log))
        policy.train()
        train_loop(start_step, total_steps, step_fn, callbacks)
    finally:
        if worker:
            worker.close()
        if cfg.rollout.backend == "vllm":
            engine.close()
        logger.close()
    models = {"final": policy} | ({"final_value": m.parts[1].model} if len(m.parts) > 1 else {})
    return finish(run, tokenizer, models, {"algorithm": cfg.algorithm, "prompts": len(prompts)}, total_steps,
                  save_as={"final": m.generator if info.distributed else policy})


def generator_state(generator, policy, info: DistInfo):
    """What the async generator loads after an update: the sync generator's state when there is a
    separate one (already refreshed), else the policy itself (copied by `push_weights`)."""
    if generator is policy:
        return policy
    return {k: v.detach().clone() for k, v in generator.state_dict().items()}


def refresh_generator(generator, policy, info: DistInfo) -> None:
    """Copy the trained weights into the generator: gathered from the shards under FSDP, merged
    from the adapters under LoRA (the live weights stay unmerged)."""
    if is_peft(policy):
        generator.load_state_dict(merged_state_dict(policy, full_state_dict(policy) if info.distributed else None))
    else:
        copy_full_weights(generator, policy)


def async_worker(cfg: RLVRConfig, gen_engine: Engine, produce, start_step: int, total_steps: int):
    """A generator thread one policy version behind at most `max_staleness`, on its own engine copy."""
    return AsyncRolloutWorker(gen_engine.model, lambda _m, step, v: produce(gen_engine, step, v),
                              start_step=start_step, end_step=total_steps, max_staleness=cfg.rollout.max_staleness,
                              weight_timeout_s=cfg.rollout.weight_sync_timeout_s,
                              batch_timeout_s=cfg.rollout.batch_timeout_s)


def load_all_prompts(cfg: RLVRConfig, tokenizer, info: DistInfo, log):
    """-> (training prompts, held-out sets evaluated during training, sets evaluated at the end)."""
    tools = MultiTurnSettings.from_config(cfg.rollout)
    system = tools.system_prompt() if tools is not None and cfg.rollout.tool_prompt else None
    prompts = load_prompts(cfg.data.paths, cfg.data, tokenizer, log, cfg.data.limit, system)
    P = cfg.rollout.prompts_per_step
    if len(prompts) < P:
        raise ValueError(f"{len(prompts)} prompts but rollout.prompts_per_step={P}")
    if P < info.world_size:
        raise ValueError(f"rollout.prompts_per_step={P} is less than the {info.world_size} processes: every "
                         f"rank samples at least one prompt")
    if info.distributed and uses_dynamic_sampling(cfg.algorithm, cfg.rollout.dynamic_sampling):
        raise ValueError("rollout.dynamic_sampling (algorithm=dapo) decides refills over the whole batch: "
                         "run it in one process")
    eval_system = system if cfg.eval.tools else None
    eval_sets, final_sets = ({Path(p).stem: load_prompts([p], cfg.data, tokenizer, log, cfg.eval.limit, eval_system)
                              for p in paths}
                             for paths in (cfg.eval.paths, cfg.eval.final_paths))
    return prompts, eval_sets, final_sets


def step_timing(batch: RolloutBatch, step: int, lr: float, t0: float, t1: float, t2: float) -> dict[str, float]:
    """Throughput and where the step's time went (t0 start, t1 batch ready, t2 update done)."""
    n, tokens = batch.num_samples, float(batch.response_lengths.sum())
    return {"lr": lr, "staleness": step - batch.policy_version, "samples_per_s": n / (t2 - t0),
            "tokens_per_s": tokens / (t2 - t0), "time/generate_s": batch.gen_seconds,
            "time/reward_s": batch.reward_seconds, "time/wait_s": t1 - t0, "time/train_s": t2 - t1,
            "time/step_s": t2 - t0}


def gather_batch(batch: RolloutBatch, info: DistInfo) -> RolloutBatch:
    """Every rank's share of the step -> the whole batch, on every rank."""
    if not info.distributed:
        return batch
    import torch.distributed as dist

    parts: list[RolloutBatch | None] = [None] * info.world_size
    dist.all_gather_object(parts, batch)
    return merge_rollouts(parts)
