"""RLVR on a Ray cluster (`distributed.engine=ray`): generator actors, a rollout pool, learner actors.

    driver (`posttrain rlvr ...`)   starts the actors below, waits for the learners, returns the run dir
    generator actor × N             its own policy copy + engine (native or vLLM); makes shard i of a
                                    step's prompts with `generate_rollouts(shard=(i, N))`, rewards included
    rollout pool (one actor)        what the learners call: `get(step)` -> the whole merged batch,
                                    `push(version, weights)`; the exact staleness of `AsyncRolloutWorker`
    learner actor × M               run the normal recipe (`recipes/rlvr.main`) as ranks of one
                                    torch.distributed group (FSDP2; gloo on CPU, nccl on GPU)

The learners read the batch from the pool instead of generating it; rank 0 puts the refreshed
generator weights into Ray's object store after each update and hands the pool a reference.

Every generator call is self-contained: (step, policy version, a reference to those weights, a
reference to the prompts). Sampling is seeded per (step, prompt position), so a call made twice
gives the same shard. That is what makes a dead generator harmless: Ray restarts it (up to
`distributed.max_generator_restarts`) and re-sends its unfinished calls, each of which loads the
weights it names before producing. When the restarts are used up, or a learner dies, the run stops
with one error naming the actor; checkpoints are the learners' (rank 0 writes the run dir as in
one process), so `run.resume=true` continues from the last one.

Ray is imported only here and only when the engine is "ray": without it the config is one clear
error. Tested on CPU (tests/test_ray_rlvr.py); see docs/RAY.md for clusters and GPU layouts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from posttrain.config import ConfigError, field
from posttrain.generation.vllm_engine import make_engine as build_engine
from posttrain.models import load_tokenizer
from posttrain.rl.algorithms import uses_dynamic_sampling
from posttrain.rl.async_worker import RolloutTimeout
from posttrain.rl.rewards import RewardModelScorer
from posttrain.rl.rollouts import RolloutBatch, RolloutSettings, generate_rollouts, merge_rollouts
from posttrain.train.common import load_for_training, resolve_dtype
from posttrain.train.dist import DistInfo
from posttrain.train.loop import step_indices

TIMING_FILE = "ray_timing.jsonl"


@dataclasses.dataclass
class RayConfig:
    engine: Literal["local", "ray"] = field("local", "local: this process (or torchrun's ranks); ray: generator "
                                                     "and learner actors on a Ray cluster (docs/RAY.md)")
    address: str | None = field(None, "Ray cluster to join: 'auto' (started with `ray start` on this node), "
                                      "host:port or ray://host:port; null starts a local one")
    num_cpus: int | None = field(None, "CPUs of the local cluster started when address is null (default: all)")
    num_generators: int = field(2, "generator actors, each with a policy copy and an engine; each makes its "
                                   "share of every step's prompts, rewards included")
    num_learners: int = field(1, "learner actors = training ranks (FSDP2 over torch.distributed)")
    generator_backend: Literal["native", "vllm"] = field("native", "the generators' engine; vllm takes "
                                                                   "rollout.vllm.* (one engine per actor)")
    generator_num_cpus: float = field(1.0, "CPUs Ray reserves per generator actor")
    generator_num_gpus: float = field(0.0, "GPUs per generator actor (rollout.vllm.tensor_parallel_size of them "
                                           "for a tensor-parallel vLLM engine)")
    learner_num_cpus: float = field(1.0, "CPUs Ray reserves per learner actor")
    learner_num_gpus: float = field(0.0, "GPUs per learner actor (1 on a GPU cluster)")
    max_generator_restarts: int = field(1, "times a dead generator actor is restarted (it reloads the weights of "
                                           "each call it redoes); after that the run stops")
    weight_sync: Literal["object_store"] = field("object_store", "how rank 0's new weights reach the generators: "
                                                                 "Ray's object store (host memory)")
    startup_timeout_s: float = field(900.0, "fail if the actors are not all up (models loaded) in this time")

    def validate(self):
        if min(self.num_generators, self.num_learners) < 1:
            raise ConfigError("distributed.num_generators and distributed.num_learners must be >= 1")
        if min(self.generator_num_cpus, self.generator_num_gpus, self.learner_num_cpus, self.learner_num_gpus) < 0:
            raise ConfigError("distributed.*_num_cpus / *_num_gpus must be >= 0")
        if self.max_generator_restarts < 0:
            raise ConfigError(f"distributed.max_generator_restarts must be >= 0, got {self.max_generator_restarts}")
        if self.startup_timeout_s <= 0:
            raise ConfigError(f"distributed.startup_timeout_s must be > 0, got {self.startup_timeout_s}")


def staleness(cfg) -> int:
    """Batch t is generated with the weights after max(start, t - staleness) updates (sync: 0)."""
    return cfg.rollout.max_staleness if cfg.rollout.mode == "async" else 0


def check_config(cfg) -> None:
    """What only a Ray run needs, checked before anything starts."""
    rc, lora = cfg.distributed, cfg.model.lora
    if cfg.rollout.backend == "vllm":
        raise ConfigError("distributed.engine=ray: set distributed.generator_backend=vllm for the generator actors' "
                          "engines; rollout.backend=vllm would also start a vLLM engine in every learner")
    if lora.enabled and (lora.load_in_4bit or lora.generation == "adapter"):
        raise ConfigError("distributed.engine=ray generates in separate actors from merged weights: use "
                          "model.lora.generation=merged (and no QLoRA)")
    if uses_dynamic_sampling(cfg.algorithm, cfg.rollout.dynamic_sampling):
        raise ConfigError("distributed.engine=ray: dynamic sampling (algorithm=dapo or rollout.dynamic_sampling) "
                          "decides refills over the whole batch, which the generator actors make in shards; run it "
                          "in one process, or use another algorithm")
    if cfg.rollout.prompts_per_step < rc.num_generators:
        raise ConfigError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} is less than "
                          f"distributed.num_generators={rc.num_generators}: every generator makes at least one prompt")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("distributed.engine=ray starts its own learner ranks: launch without torchrun")


# ---------------------------------------------------------------- weights through the object store

def pack_state(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, np.ndarray]]:
    """CPU numpy arrays, which Ray's object store hands to readers on the node without a copy;
    bf16 travels as int16 bits (numpy has no bf16)."""
    out = {}
    for name, t in state.items():
        t = t.detach().to("cpu").contiguous()
        out[name] = (str(t.dtype), t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy())
    return out


def unpack_state(packed: dict[str, tuple[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():  # the arrays are read-only views of the store: loading copies them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {name: (torch.from_numpy(a).view(torch.bfloat16) if dtype == "torch.bfloat16" else torch.from_numpy(a))
                for name, (dtype, a) in packed.items()}


# ---------------------------------------------------------------- the actors

class Generator:
    """One generator actor: a policy copy and the recipe's engine factory, shard `index` of `count`."""

    def __init__(self, cfg, index: int, count: int, cwd: str):
        _enter(cwd)
        import ray

        self.cfg, self.index, self.count = cfg, index, count
        info = DistInfo(device=torch.device("cuda" if ray.get_gpu_ids() else "cpu"))
        dtype = resolve_dtype(cfg.model.dtype, info.device)
        tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.chat_template)
        rc, r = cfg.distributed, cfg.rollout
        if rc.generator_backend == "vllm":  # vLLM loads the weights from the path itself
            self.engine = build_engine("vllm", cfg.model.name_or_path, tokenizer, vllm=r.vllm, dtype=dtype,
                                       max_batch_size=r.engine_max_batch_size,
                                       config_key="distributed.generator_backend")
        else:  # the policy's own loader (class, dtype, attention), as the sync generator is
            model = load_for_training(cfg.model, info, dtype, reference=True).eval().requires_grad_(False)
            self.engine = build_engine(r.engine_backend, model, tokenizer, max_batch_size=r.engine_max_batch_size)
        self.settings = RolloutSettings.from_config(r, cfg.reward)
        self.rm = RewardModelScorer(cfg.reward.rm_model, dtype, info.device) if cfg.reward.rm_weight else None
        self.version: int | None = None
        self.prompts = None
        with warnings.catch_warnings():  # Ray's own property reads a deprecated one of its own
            warnings.simplefilter("ignore", DeprecationWarning)
            self.restarted = ray.get_runtime_context().was_current_actor_reconstructed

    def ready(self) -> bool:
        return True

    def generate(self, step: int, version: int, weights: list, prompts: list) -> tuple[RolloutBatch, dict]:
        """This actor's shard of `step`'s batch with the weights after `version` updates. The
        references come wrapped in lists so that Ray fetches them only when they are needed."""
        import ray

        t0 = time.perf_counter()
        if self.prompts is None:
            self.prompts = ray.get(prompts[0])
        if self.version != version:
            state = unpack_state(ray.get(weights[0]))
            if hasattr(self.engine, "update_weights"):  # vLLM holds its own copy
                self.engine.update_weights(state)
            else:
                with torch.no_grad():
                    self.engine.model.load_state_dict(state)
            self.version = version
        load_s = time.perf_counter() - t0
        cfg, P = self.cfg, self.cfg.rollout.prompts_per_step
        idx = step_indices(len(self.prompts), P, step, len(self.prompts) // P, cfg.run.seed)
        batch = generate_rollouts(self.engine, self.prompts, idx, step, version, cfg.run.seed, self.settings, self.rm,
                                  shard=(self.index, self.count))
        return batch, {"weight_load_s": load_s, "restarted": self.restarted, "made_at": time.time()}


class RolloutPool:
    """Hands every learner the whole batch of a step; submits the generator calls as soon as the
    weights they need exist. Runs as a threaded actor: the learners' calls may overlap."""

    def __init__(self, generators: list, names: list[str], num_learners: int, max_staleness: int, restarts: int):
        self.generators, self.names, self.learners = generators, names, num_learners
        self.staleness, self.restarts = max_staleness, restarts
        self.cond = threading.Condition()
        self.calls: dict[int, list] = {}  # step -> one pending call per generator
        self.done: dict[int, tuple[tuple, set[int]]] = {}  # step -> (result, ranks served)
        self.version = self.start = self.end = None
        self.prompts: list | None = None

    def begin(self, start: int, end: int, prompts: list, weights: list) -> None:
        """Rank 0, once: the step range and the weights the run starts from (resumed ones on resume)."""
        self.start, self.end, self.version, self.prompts = start, end, start, prompts
        for step in range(start, min(end, start + self.staleness + 1)):
            self._submit(step, start, weights)

    def push(self, version: int, weights: list) -> None:
        """Rank 0: the weights after `version` updates; the step that needs them can start."""
        assert version == self.version + 1, f"weights pushed out of order: {version} after {self.version}"
        self.version = version
        if version + self.staleness < self.end:
            self._submit(version + self.staleness, version, weights)

    def _submit(self, step: int, version: int, weights: list) -> None:
        calls = [g.generate.remote(step, version, weights, self.prompts) for g in self.generators]
        with self.cond:
            self.calls[step] = calls
            self.cond.notify_all()

    def get(self, step: int, rank: int, timeout_s: float) -> tuple:
        """("ok", batch, timing) or ("error", message): the learner raises it, so the message stays one line."""
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

        deadline = time.monotonic() + timeout_s
        with self.cond:
            while step not in self.calls and step not in self.done:
                if not self.cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    return ("error", f"no rollout batch for step {step + 1} within rollout.batch_timeout_s="
                                     f"{timeout_s:g}s: its weights were never pushed (is learner rank 0 stuck?)")
            calls = self.calls.get(step)
        if step not in self.done:
            parts, metas = [], []
            for name, call in zip(self.names, calls):
                try:
                    batch, meta = ray.get(call, timeout=max(0.0, deadline - time.monotonic()))
                except GetTimeoutError:
                    return ("error", f"no rollout shard from {name} for step {step + 1} within "
                                     f"rollout.batch_timeout_s={timeout_s:g}s")
                except (RayActorError, ActorUnavailableError) as e:
                    return ("error", f"generator actor {name} died and was not brought back "
                                     f"(distributed.max_generator_restarts={self.restarts}): {_last_line(e)}")
                except RayTaskError as e:
                    return ("error", f"generator actor {name} failed making step {step + 1}: {_cause(e)}")
                parts.append(batch)
                metas.append(meta)
            timing = {"generate_s": max(p.gen_seconds for p in parts), "reward_s": max(p.reward_seconds for p in parts),
                      "weight_load_s": max(m["weight_load_s"] for m in metas),
                      "restarted_generators": sum(bool(m["restarted"]) for m in metas),
                      "made_at": max(m["made_at"] for m in metas)}
            result = (merge_rollouts(parts), timing)
            with self.cond:
                self.done.setdefault(step, (result, set()))
                self.calls.pop(step, None)
        with self.cond:
            result, served = self.done[step]
            served.add(rank)
            if len(served) == self.learners:  # every rank has it: drop it
                del self.done[step]
        return ("ok", *result)


class Learner:
    """One training rank: the recipe itself, with the pool in place of its own generation."""

    def address(self) -> tuple[str, int]:
        import ray

        with socket.socket() as s:  # a free port on this node for torch.distributed's rendezvous
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def run(self, entry: Callable, cfg, pool, rank: int, world: int, master: tuple[str, int], cwd: str) -> str:
        global _LEARNER
        _enter(cwd)
        os.environ.update(MASTER_ADDR=master[0], MASTER_PORT=str(master[1]), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK="0")  # Ray shows each actor only its own GPU(s)
        _LEARNER = (pool, rank)
        return str(entry(cfg))


_LEARNER: tuple[Any, int] | None = None  # (pool handle, rank) inside a learner actor


def _enter(cwd: str) -> None:
    """Actors resolve the config's relative paths as the driver did (multi-node: a shared filesystem)."""
    if os.path.isdir(cwd):
        os.chdir(cwd)


def _cause(e) -> str:
    cause = getattr(e, "cause", None) or e
    return f"{type(cause).__name__}: {cause}"


def _last_line(e) -> str:
    """Ray's actor errors end with the exception that killed the actor, after a long preamble."""
    lines = [x for x in str(e).splitlines() if x.strip()]
    return lines[-1].strip() if lines else type(e).__name__


# ---------------------------------------------------------------- the learners' side

def hands_off(cfg) -> bool:
    """True in the process that should launch the Ray job (not inside one of its learners)."""
    return cfg.distributed.engine == "ray" and _LEARNER is None


class PoolClient:
    """The `AsyncRolloutWorker` interface the recipe uses (get, push_weights, last_needed_version,
    close), backed by the rollout pool. Rank 0 starts the pool and pushes the weights."""

    def __init__(self, cfg, pool, rank: int, prompts: list, start_step: int, end_step: int, generator):
        import ray

        self.ray, self.pool, self.rank = ray, pool, rank
        self.batch_timeout_s, self.weight_timeout_s = cfg.rollout.batch_timeout_s, cfg.rollout.weight_sync_timeout_s
        self.last_needed_version = max(start_step, end_step - 1 - staleness(cfg))
        self.timing_path = Path(cfg.run.output_dir) / TIMING_FILE
        self.rows: dict[int, dict] = {}
        if rank == 0:
            if self.timing_path.is_file():  # on resume: one history, as metrics.jsonl
                kept = [r for r in self.timing_path.read_text().splitlines() if json.loads(r)["step"] <= start_step]
                self.timing_path.write_text("".join(r + "\n" for r in kept))
            self._call(pool.begin.remote(start_step, end_step, [ray.put(prompts)], [self._put(generator)]),
                       self.weight_timeout_s, "start the rollout pool")

    def get(self, step: int) -> RolloutBatch:
        t0, asked = time.perf_counter(), time.time()
        out = self._call(self.pool.get.remote(step, self.rank, self.batch_timeout_s), self.batch_timeout_s + 60,
                         f"get the batch of step {step + 1}")
        if out[0] == "error":
            raise RuntimeError(f"Ray rollouts: {out[1]}")
        _, batch, timing = out
        # The actor boundary's own cost: from the moment the batch existed and was wanted to its arrival
        # here (generators -> pool -> this rank, merge included). One node's clock on a local cluster.
        boundary = time.time() - max(timing.pop("made_at"), asked)
        self.rows[step] = {"step": step + 1, "get_s": time.perf_counter() - t0, "boundary_s": boundary, **timing}
        return batch

    def push_weights(self, version: int, generator) -> None:
        """The generator's weights after `version` updates (rank 0 only: every rank holds the same)."""
        if self.rank != 0 or version > self.last_needed_version:
            return
        t0 = time.perf_counter()
        self._call(self.pool.push.remote(version, [self._put(generator)]), self.weight_timeout_s,
                   f"push weights version {version}")
        self.rows.get(version - 1, {})["push_s"] = time.perf_counter() - t0

    def close(self) -> None:
        if self.rank == 0 and self.rows:
            with open(self.timing_path, "a") as fh:
                for step in sorted(self.rows):
                    fh.write(json.dumps(self.rows[step]) + "\n")

    def _put(self, generator):
        state = generator if isinstance(generator, dict) else generator.state_dict()
        return self.ray.put(pack_state(state))

    def _call(self, ref, timeout_s: float, what: str):
        try:
            return self.ray.get(ref, timeout=timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            raise RolloutTimeout(f"the rollout pool did not answer within {timeout_s:g}s to {what} "
                                 f"(rollout.batch_timeout_s / rollout.weight_sync_timeout_s)") from None


def learner_pool(cfg, prompts: list, start_step: int, end_step: int, generator) -> PoolClient | None:
    """The pool client when this process is a Ray learner, else None (the recipe's own rollouts)."""
    if _LEARNER is None:
        return None
    pool, rank = _LEARNER
    return PoolClient(cfg, pool, rank, prompts, start_step, end_step, generator)


# ---------------------------------------------------------------- the driver

def actor_name(cfg, kind: str, index: int = 0) -> str:
    """Named actors, so that `ray list actors` (and a test) can find them; the run dir makes them unique."""
    tag = hashlib.sha256(str(Path(cfg.run.output_dir).resolve()).encode()).hexdigest()[:8]
    return f"posttrain-rlvr-{tag}-{kind}-{index}"


def launch(cfg, entry: Callable) -> Path:
    """Run `entry(cfg)` (the recipe's main) on `num_learners` learner actors fed by
    `num_generators` generator actors; the learners' result (the final model dir)."""
    check_config(cfg)
    try:
        import ray
    except ImportError:
        raise ConfigError("distributed.engine=ray needs Ray: pip install -e .[ray]") from None
    rc, cwd = cfg.distributed, os.getcwd()
    started = not ray.is_initialized()
    if started:
        ray.init(address=rc.address, num_cpus=rc.num_cpus if rc.address is None else None, include_dashboard=False)
    actors: list = []
    try:
        n, m = rc.num_generators, rc.num_learners
        gen_names = [actor_name(cfg, "generator", i) for i in range(n)]
        gens = [ray.remote(Generator).options(
            name=gen_names[i], num_cpus=rc.generator_num_cpus, num_gpus=rc.generator_num_gpus,
            max_restarts=rc.max_generator_restarts, max_task_retries=rc.max_generator_restarts).remote(cfg, i, n, cwd)
            for i in range(n)]
        actors += gens
        pool = ray.remote(RolloutPool).options(name=actor_name(cfg, "pool"), num_cpus=0,
                                               max_concurrency=2 * m + 4).remote(
            gens, gen_names, m, staleness(cfg), rc.max_generator_restarts)
        learners = [ray.remote(Learner).options(name=actor_name(cfg, "learner", r), num_cpus=rc.learner_num_cpus,
                                                num_gpus=rc.learner_num_gpus, max_restarts=0).remote()
                    for r in range(m)]
        actors += [pool, *learners]
        _wait({g.ready.remote(): name for g, name in zip(gens, gen_names)}, cfg, rc.startup_timeout_s, "start")
        master = ray.get(learners[0].address.remote(), timeout=rc.startup_timeout_s)
        runs = {lr.run.remote(entry, cfg, pool, r, m, master, cwd): f"learner actor {actor_name(cfg, 'learner', r)} "
                f"(rank {r})" for r, lr in enumerate(learners)}
        results = _wait(runs, cfg, None, "run")
        return Path(results[0])
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
        if started:
            ray.shutdown()


def _wait(refs: dict, cfg, timeout_s: float | None, what: str) -> list:
    """Results in order; the first failure stops the whole job with one error naming the actor."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    order, results = list(refs), {}
    pending, deadline = list(refs), None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not done:
            raise RuntimeError(f"Ray actors did not {what} within distributed.startup_timeout_s={timeout_s:g}s: "
                               f"{', '.join(refs[r] for r in pending)} (not enough free CPUs/GPUs in the cluster?)")
        ref = done[0]
        try:
            results[ref] = ray.get(ref)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, ValueError):  # bad input (config, data, run dir): as in one process
                raise cause from None
            raise RuntimeError(f"{refs[ref]} failed: {_cause(e)}{_resume_hint(cfg)}") from None
        except RayActorError as e:
            if getattr(e, "actor_init_failed", False):  # e.g. a model that does not load: nothing ran yet
                raise RuntimeError(f"{refs[ref]} could not start: {_last_line(e)}") from None
            raise RuntimeError(f"{refs[ref]} died ({type(e).__name__}){_resume_hint(cfg)}") from None
    return [results[r] for r in order]


def _resume_hint(cfg) -> str:
    return (f". The run stopped; nothing up to its last checkpoint is lost: run it again with run.resume=true "
            f"to continue from {Path(cfg.run.output_dir) / 'checkpoints'}")
