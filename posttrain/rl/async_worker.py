"""Asynchronous rollouts: a generator thread with its own copy of the policy produces batch t+1
while the trainer trains on batch t.

Staleness is exact, not "whatever is newest": the batch of step b is generated with the policy
after max(start, b − max_staleness) updates. Every version is pushed once, in order, through a
bounded queue, so a run is as deterministic as the kernels underneath it. Nothing waits forever:
- the trainer's `push_weights` gives up after `weight_timeout_s` if the generator has not taken
  the earlier versions (it is stuck or dead) and raises `WeightSyncTimeout`;
- the generator gives up after `weight_timeout_s` waiting for a version it needs;
- the trainer's `get` gives up after `batch_timeout_s`, and re-raises any generator error.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import torch

from posttrain.rl.rollouts import RolloutBatch

_POLL_S = 0.05


class WeightSyncTimeout(RuntimeError):
    pass


class RolloutTimeout(RuntimeError):
    pass


class _Stopped(Exception):
    pass


class AsyncRolloutWorker:
    """`produce(model, step, version)` makes one batch with the worker's model copy."""

    def __init__(self, model: torch.nn.Module, produce: Callable[[torch.nn.Module, int, int], RolloutBatch], *,
                 start_step: int, end_step: int, max_staleness: int = 1, weight_timeout_s: float = 600.0,
                 batch_timeout_s: float = 3600.0):
        if max_staleness < 1:
            raise ValueError(f"rollout.max_staleness must be >= 1 in async mode, got {max_staleness}")
        self.model, self.produce = model, produce
        self.start, self.end, self.staleness = start_step, end_step, max_staleness
        self.weight_timeout_s, self.batch_timeout_s = weight_timeout_s, batch_timeout_s
        self.version = start_step  # updates applied to the worker's weights
        # Versions start+1 .. are pushed in order; at most staleness + 1 are ever pending (the
        # trainer pushes v + 1 only after receiving the batch made with v − staleness).
        self._weights: queue.Queue = queue.Queue(maxsize=max_staleness + 1)
        self._out: queue.Queue = queue.Queue(maxsize=max_staleness)
        self._stop = threading.Event()
        self.last_needed_version = max(start_step, end_step - 1 - max_staleness)
        self._thread = threading.Thread(target=self._run, name="rlvr-rollouts", daemon=True)
        self._thread.start()

    def needed_version(self, step: int) -> int:
        return max(self.start, step - self.staleness)

    # -- generator side ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            for step in range(self.start, self.end):
                self._load_until(self.needed_version(step))
                batch = self.produce(self.model, step, self.version)
                self._put(batch)
        except _Stopped:
            return
        except BaseException as e:  # handed to the trainer, which raises it
            self._put(e, force=True)

    def _load_until(self, version: int) -> None:
        state = None
        while self.version < version:
            deadline = time.monotonic() + self.weight_timeout_s
            while True:
                if self._stop.is_set():
                    raise _Stopped
                try:
                    v, state = self._weights.get(timeout=_POLL_S)
                    break
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise WeightSyncTimeout(
                            f"the rollout generator waited rollout.weight_sync_timeout_s={self.weight_timeout_s:g}s "
                            f"for policy weights version {self.version + 1} and none came (is the trainer stuck?)"
                        ) from None
            assert v == self.version + 1, f"weights pushed out of order: got version {v}, expected {self.version + 1}"
            self.version = v
        if state is not None:  # intermediate versions are skipped: only the needed one is loaded
            with torch.no_grad():
                self.model.load_state_dict(state)

    def _put(self, item, force: bool = False) -> None:
        while not self._stop.is_set():
            try:
                self._out.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                if force:  # an error must get through: drop a batch nobody will use now
                    try:
                        self._out.get_nowait()
                    except queue.Empty:
                        pass
        if not force:
            raise _Stopped

    # -- trainer side ------------------------------------------------------------------------

    def get(self, step: int) -> RolloutBatch:
        """The batch of `step` (blocks until the generator has made it)."""
        try:
            item = self._out.get(timeout=self.batch_timeout_s)
        except queue.Empty:
            state = "alive" if self._thread.is_alive() else "dead"
            raise RolloutTimeout(f"no rollout batch for step {step + 1} within rollout.batch_timeout_s="
                                 f"{self.batch_timeout_s:g}s (the generator thread is {state})") from None
        if isinstance(item, BaseException):
            raise RuntimeError(f"the rollout generator failed: {type(item).__name__}: {item}") from item
        assert item.step == step, f"rollout batches out of order: got step {item.step}, expected {step}"
        return item

    def push_weights(self, version: int, model: torch.nn.Module | dict) -> None:
        """Hand the policy after `version` updates to the generator (a copy: training goes on).
        `model` may also be a state dict the caller already copied (a sharded policy's, gathered)."""
        if version > self.last_needed_version:
            return  # no batch left to generate with it
        state = model if isinstance(model, dict) else {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            self._weights.put((version, state), timeout=self.weight_timeout_s)
        except queue.Full:
            raise WeightSyncTimeout(
                f"the rollout generator did not take the pending policy weights within "
                f"rollout.weight_sync_timeout_s={self.weight_timeout_s:g}s while version {version} waited to be "
                f"pushed; it is stuck or dead (thread {'alive' if self._thread.is_alive() else 'dead'})") from None

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
