"""The asynchronous generator: exact bounded staleness, and no silent hangs (timeouts name the key)."""

import threading
import time

import pytest
import torch

from posttrain.rl.async_worker import AsyncRolloutWorker, RolloutTimeout, WeightSyncTimeout
from posttrain.rl.rollouts import RolloutBatch


def fake_batch(step: int, version: int, weight: float) -> RolloutBatch:
    # The "rollout" records which weights made it: the worker's model weight.
    return RolloutBatch(step=step, policy_version=version, group_size=1, prompt_ids=[[1]], response_ids=[[2]],
                        gen_logprobs=[[0.0]], texts=[""], finish_reasons=["eos"], verifier_keys=["x"],
                        scores=torch.tensor([weight]), rewards=torch.tensor([weight]))


def make_model(value: float = 0.0) -> torch.nn.Module:
    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def produce(model, step, version):
    return fake_batch(step, version, model.weight.item())


@pytest.mark.parametrize("staleness", [1, 2])
def test_each_batch_uses_exactly_the_allowed_stale_weights(staleness):
    trainer = make_model(0.0)
    worker = AsyncRolloutWorker(make_model(0.0), produce, start_step=0, end_step=6, max_staleness=staleness,
                                weight_timeout_s=10, batch_timeout_s=10)
    seen = []
    try:
        for step in range(6):
            batch = worker.get(step)
            seen.append((batch.policy_version, batch.scores.item()))
            with torch.no_grad():
                trainer.weight.fill_(step + 1.0)  # "training": the weight equals the version
            worker.push_weights(step + 1, trainer)
    finally:
        worker.close()
    expected = [max(0, s - staleness) for s in range(6)]
    assert [v for v, _ in seen] == expected
    assert [w for _, w in seen] == [float(v) for v in expected]  # the loaded weights are that version's


def test_resumed_worker_starts_from_the_resumed_version():
    worker = AsyncRolloutWorker(make_model(4.0), produce, start_step=4, end_step=7, max_staleness=1,
                                weight_timeout_s=10, batch_timeout_s=10)
    trainer = make_model(4.0)
    try:
        versions = []
        for step in range(4, 7):
            versions.append(worker.get(step).policy_version)
            worker.push_weights(step + 1, trainer)
    finally:
        worker.close()
    assert versions == [4, 4, 5]


def test_stuck_generator_makes_weight_push_fail_with_a_clear_error():
    release = threading.Event()

    def stuck(model, step, version):
        if step >= 1:
            release.wait(30)  # the generator hangs making batch 1
        return produce(model, step, version)

    worker = AsyncRolloutWorker(make_model(), stuck, start_step=0, end_step=10, max_staleness=1,
                                weight_timeout_s=0.3, batch_timeout_s=0.3)
    trainer = make_model()
    try:
        worker.get(0)
        worker.push_weights(1, trainer)
        worker.push_weights(2, trainer)  # fills the bounded queue (staleness + 1 pending versions)
        t0 = time.monotonic()
        with pytest.raises(WeightSyncTimeout, match=r"rollout.weight_sync_timeout_s=0.3s.*stuck or dead"):
            worker.push_weights(3, trainer)
        assert time.monotonic() - t0 < 5
        with pytest.raises(RolloutTimeout, match=r"step 2 within rollout.batch_timeout_s=0.3s.*alive"):
            worker.get(1)
    finally:
        release.set()
        worker.close()


def test_generator_waiting_for_weights_times_out_and_errors_reach_the_trainer():
    worker = AsyncRolloutWorker(make_model(), produce, start_step=0, end_step=5, max_staleness=1,
                                weight_timeout_s=0.2, batch_timeout_s=10)
    try:
        worker.get(0)
        worker.get(1)  # made with version 0: no push needed yet
        # batch 2 needs version 1, which never comes: the generator's error surfaces on get
        with pytest.raises(RuntimeError, match="waited rollout.weight_sync_timeout_s=0.2s for policy weights "
                                               "version 1"):
            worker.get(2)
    finally:
        worker.close()

    def broken(model, step, version):
        raise ValueError("verifier exploded")

    worker = AsyncRolloutWorker(make_model(), broken, start_step=0, end_step=3, weight_timeout_s=1, batch_timeout_s=10)
    try:
        with pytest.raises(RuntimeError, match="rollout generator failed: ValueError: verifier exploded"):
            worker.get(0)
    finally:
        worker.close()
