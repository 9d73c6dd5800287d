"""The generation engine: batched, KV-cached, continuously batched decoding for eval and RL.

    engine = Engine(model, tokenizer)
    outs = engine.generate(["<prompt>", ...], SamplingParams(temperature=0.7, n=4, seed=0))

Each prompt becomes `n` sequences. A sequence is prefilled into a free cache row, decoded one
token per step with every other active sequence, and leaves the batch the step it finishes (EOS
or another stop token, a stop string, or its token budget); on the fast path its row is refilled
with a waiting sequence, so long outputs never hold short ones hostage. See docs/GENERATION.md for
the log-prob convention and how stop strings trim tokens.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from torch import Tensor

from posttrain.generation.fast_llama import FastLlama, shared_prefix_len, fast_path_unsupported_reason
from posttrain.generation.hf_backend import HFBackend
from posttrain.generation.sampling import RowSettings, SamplingParams, sample_next, sequence_key

FinishReason = Literal["stop", "length", "eos"]


@dataclass
class Completion:
    prompt_index: int
    sample_index: int
    prompt_token_ids: list[int]
    token_ids: list[int]  # every sampled token, the final EOS / stop-string tokens included
    logprobs: list[float]  # one per token_ids entry (empty if params.logprobs is False)
    text: str  # decoded token_ids without a final stop token, cut before a matched stop string
    finish_reason: FinishReason


@dataclass
class _Step:
    """A sampled decode step whose results may still be on their way to the host."""

    seqs: list["_Seq"]
    tokens: Tensor  # [B] on the device
    host: Tensor  # [1 or 2, B] float32: tokens (and log-probs), on the CPU once `event` is done
    event: "torch.cuda.Event | None"


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_calls: int = 0
    decode_steps: int = 0
    seconds: float = 0.0


@dataclass
class _Seq:
    prompt_index: int
    sample_index: int
    prompt: list[int]
    params: SamplingParams
    stop_ids: frozenset[int]
    max_new: int
    key: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: FinishReason | None = None
    text: str | None = None


def default_stop_token_ids(model, tokenizer) -> tuple[int, ...]:
    """The model's EOS ids: generation_config, else config, else the tokenizer's."""
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
    eos = getattr(tokenizer, "eos_token_id", None)
    return () if eos is None else (int(eos),)



def encode_prompts(tokenizer, prompts: list, add_special_tokens: bool) -> list[list[int]]:
    """Token ids of each prompt (strings through the tokenizer, id lists as they are); shared by
    the engines so that every backend rejects the same inputs the same way."""
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError(f"generate: prompt {i} is a string but the engine has no tokenizer")
            ids = tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]
        else:
            ids = [int(t) for t in p]
        if not ids:
            raise ValueError(f"generate: prompt {i} is empty")
        out.append(ids)
    return out

class Engine:
    """Holds a model, its backend (fast Llama-family path or the HF fallback) and its KV cache.

    backend: "auto" (fast path when the architecture allows), "fast" or "hf".
    max_batch_size: cache rows, i.e. sequences decoded together.
    cuda_graphs: capture decode steps as CUDA graphs (default: on for CUDA models, fast path).
    fuse_weights: keep fused QKV / gate-up copies of the weights (default: on CUDA only; they
        are refreshed when the model's parameters change in place, e.g. after an optimizer step).
    overlap: keep one decode step in flight while the host reads the previous one (default: on
        for CUDA; on CPU it only costs one wasted row-step per sequence).
    cascade: when every prompt of a call shares >= `backend.min_shared_prefix` leading tokens,
        hold their KV once and attend to it for all rows together (default: on the fast path
        without CUDA graphs, i.e. on CPU).
    packed_gemm: run the fast path's matrix products through oneDNN on weights packed once per
        refresh (default: on for float32 models on CPU when torch has oneDNN).

    Fused and packed weight copies are rebuilt when a parameter's version counter moves, i.e. after
    any in-place update. torch's fused optimizers do not move it: `posttrain.train.optim
    .build_optimizer` bumps it after each step; with another fused optimizer call
    `engine.backend.refresh_weights(force=True)` after updating the model.
    """

    def __init__(self, model, tokenizer=None, *, backend: str = "auto", max_batch_size: int = 64,
                 cuda_graphs: bool | None = None, fuse_weights: bool | None = None,
                 prefill_token_budget: int | None = None, overlap: bool | None = None,
                 cascade: bool | None = None, packed_gemm: bool | None = None):
        if backend not in ("auto", "fast", "hf"):
            raise ValueError(f"Engine backend must be 'auto', 'fast' or 'hf', got {backend!r}")
        if max_batch_size < 1:
            raise ValueError(f"Engine max_batch_size must be >= 1, got {max_batch_size}")
        self.model, self.tokenizer = model, tokenizer
        reason = fast_path_unsupported_reason(model)
        if backend == "fast" and reason:
            raise ValueError(f"Engine backend='fast' cannot run this model: {reason}")
        if backend == "hf" or reason:
            self.backend: FastLlama | HFBackend = HFBackend(model)
        else:
            self.backend = FastLlama(model, fuse_weights=fuse_weights, cuda_graphs=cuda_graphs, cascade=cascade,
                                     packed_gemm=packed_gemm)
        self.device = self.backend.device
        self.max_batch_size = max_batch_size
        # padded prompt tokens per prefill call: bounds activation memory for long prompts
        self.prefill_token_budget = prefill_token_budget or (32768 if self.device.type == "cuda" else 4096)
        self.default_stop_ids = default_stop_token_ids(model, tokenizer)
        self.overlap = self.device.type == "cuda" if overlap is None else overlap
        self._pieces: dict[tuple[int, bool], str] = {}  # token id -> its text alone, for stop checks
        self.stats = GenerationStats()

    @property
    def backend_name(self) -> str:
        return "fast" if isinstance(self.backend, FastLlama) else "hf"

    # -- public ------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str] | Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, add_special_tokens: bool = False, prompt_keys: Sequence[int] | None = None) -> list[Completion]:
        """Complete every prompt `params.n` times; results sorted by (prompt, sample) index.

        Strings are tokenized with `add_special_tokens=False` by default: chat-templated prompts
        already carry their BOS. `params` may be one SamplingParams or one per prompt.
        `prompt_keys`: one integer per prompt that, with the seed and the sample index, fixes the
        sample's random stream (default: the prompt's position). A caller that splits one batch
        across processes passes the global positions, so each draws what one process would.
        """
        start = time.perf_counter()
        prompts = list(prompts)
        plist = self._params_per_prompt(params, len(prompts))
        token_prompts = self._encode(prompts, add_special_tokens)
        if prompt_keys is not None and len(prompt_keys) != len(prompts):
            raise ValueError(f"generate: got {len(prompt_keys)} prompt_keys for {len(prompts)} prompts")
        seqs = self._make_sequences(token_prompts, plist, prompt_keys)
        if not seqs:
            return []
        self.stats = GenerationStats(prompt_tokens=sum(len(p) for p in token_prompts))
        self.backend.refresh_weights()
        max_len = max(len(s.prompt) + s.max_new for s in seqs)
        num_slots = min(self.max_batch_size, len(seqs))
        prefix = self._cascade_prefix(seqs)
        if prefix:
            self.backend.allocate(num_slots, max_len, prefix=prefix)
        else:
            self.backend.allocate(num_slots, max_len)
        was_training = self.model.training
        self.model.eval()
        try:
            self._run(seqs, num_slots)
        finally:
            self.model.train(was_training)
        outs = [self._completion(s) for s in seqs]
        self.stats.generated_tokens = sum(len(o.token_ids) for o in outs)
        self.stats.seconds = time.perf_counter() - start
        return sorted(outs, key=lambda o: (o.prompt_index, o.sample_index))

    # -- setup -------------------------------------------------------------------------------

    @staticmethod
    def _params_per_prompt(params, n: int) -> list[SamplingParams]:
        if params is None:
            params = SamplingParams()
        if isinstance(params, SamplingParams):
            return [params] * n
        plist = list(params)
        if len(plist) != n:
            raise ValueError(f"generate: got {len(plist)} SamplingParams for {n} prompts")
        return plist

    def _encode(self, prompts: list, add_special_tokens: bool) -> list[list[int]]:
        return encode_prompts(self.tokenizer, prompts, add_special_tokens)

    def _make_sequences(self, prompts: list[list[int]], plist: list[SamplingParams],
                        prompt_keys: Sequence[int] | None = None) -> list[_Seq]:
        limit = self.backend.max_positions
        seeds: dict[int, int] = {}
        seqs = []
        for i, (ids, p) in enumerate(zip(prompts, plist)):
            if p.stop and self.tokenizer is None:
                raise ValueError(f"generate: prompt {i} has stop strings but the engine has no tokenizer")
            if len(ids) >= limit:
                raise ValueError(f"generate: prompt {i} has {len(ids)} tokens, the model's limit is {limit}")
            if id(p) not in seeds:  # one seed per params object, drawn from torch's global RNG
                seeds[id(p)] = p.seed if p.seed is not None else int(torch.randint(0, 2**62, ()).item())
            stop_ids = frozenset() if p.ignore_eos else frozenset(
                p.stop_token_ids if p.stop_token_ids is not None else self.default_stop_ids)
            for j in range(p.n):
                seqs.append(_Seq(prompt_index=i, sample_index=j, prompt=ids, params=p, stop_ids=stop_ids,
                                 max_new=min(p.max_new_tokens, limit - len(ids)),
                                 key=sequence_key(seeds[id(p)], i if prompt_keys is None else int(prompt_keys[i]), j)))
        return seqs

    def _cascade_prefix(self, seqs: list[_Seq]) -> list[int] | None:
        """The leading tokens every prompt of this call shares (few-shot exemplars, or one prompt's
        n samples), if the backend can hold them once for all rows and they are long enough."""
        backend = self.backend
        if not getattr(backend, "cascade", False) or len(seqs) < 2 or not backend.min_shared_prefix:
            return None
        uniq = list({id(s.prompt): s.prompt for s in seqs}.values())
        n = shared_prefix_len(uniq) if len(uniq) > 1 else len(uniq[0]) - 1
        return uniq[0][:n] if n >= backend.min_shared_prefix else None

    # -- the loop ----------------------------------------------------------------------------

    def _run(self, seqs: list[_Seq], num_slots: int) -> None:
        waiting = deque(seqs)
        active: list[_Seq] = []
        next_tokens: Tensor | None = None  # [len(active)] on device: the next input per row
        rows: RowSettings | None = None
        inflight: _Step | None = None
        # On CUDA one decode step stays in flight: step t+1 is launched from step t's tokens (still
        # on the device) before the host reads step t's tokens, so host bookkeeping overlaps GPU
        # work. A sequence that ended at step t then runs one wasted row-step, whose token is
        # dropped. On CPU nothing overlaps, so by default steps are collected at once.
        overlap = self.overlap
        refill_at = 1 if self.device.type == "cpu" else max(1, num_slots // 8)
        while waiting or active:
            free = num_slots - len(active)
            can_refill = self.backend.supports_refill or not active
            if waiting and can_refill and (free >= refill_at or len(waiting) <= free or not active):
                if inflight is not None:  # settle finishes first: they free rows
                    self._collect(inflight)
                    inflight = None
                    active, next_tokens, rows = self._compact(active, next_tokens, rows)
                    continue
                admitted = self._admit(waiting, free)
                logits = self._prefill(admitted, len(active))
                active.extend(admitted)
                rows = self._row_settings(active)
                offset = len(active) - len(admitted)
                step = self._launch(logits, admitted, rows.slice(offset, len(admitted)))
                rows.steps[offset:] += 1
                self._collect(step)
                next_tokens = step.tokens if next_tokens is None else torch.cat([next_tokens, step.tokens])
            else:
                logits = self.backend.decode(next_tokens, len(active))
                self.stats.decode_steps += 1
                step = self._launch(logits, list(active), rows)
                rows.steps += 1
                next_tokens = step.tokens
                if inflight is not None:
                    self._collect(inflight)
                inflight = step
                if not overlap:
                    self._collect(inflight)
                    inflight = None
            active, next_tokens, rows = self._compact(active, next_tokens, rows)
        if inflight is not None:  # only rows that had already finished: nothing to record
            self._collect(inflight)

    def _compact(self, active: list[_Seq], next_tokens: Tensor | None, rows: RowSettings | None):
        """Drop finished rows from the batch, the cache and the per-row tensors."""
        keep = [r for r, s in enumerate(active) if s.finish is None]
        if len(keep) == len(active):
            return active, next_tokens, rows
        order = _fill_from_tail(keep, len(active))
        self.backend.select(order)
        active = [active[r] for r in order]
        if not active:
            return active, None, None
        idx = torch.tensor(order, device=self.device)
        # select rather than rebuild: `steps` counts an in-flight token the host has not seen yet
        return active, next_tokens.index_select(0, idx), rows.select(idx)

    @staticmethod
    def _admit(waiting: deque, free: int) -> list[_Seq]:
        admitted = []
        while waiting and len(admitted) < free:
            admitted.append(waiting.popleft())
        return admitted

    def _prefill(self, admitted: list[_Seq], first_row: int) -> Tensor:
        """Prefill `admitted` into rows first_row.. in chunks under the token budget; dedupe prompts."""
        chunks: list[Tensor] = []
        i = 0
        while i < len(admitted):
            uniq: list[list[int]] = []
            where: dict[int, int] = {}
            slots, sources = [], []
            longest = 0
            while i < len(admitted):
                p = admitted[i].prompt
                new = id(p) not in where
                width = max(longest, len(p)) if new else longest
                over = width * (len(uniq) + 1) > self.prefill_token_budget
                # the HF backend prefills a whole wave in one call
                if slots and new and over and self.backend.supports_refill:
                    break
                if new:
                    where[id(p)] = len(uniq)
                    uniq.append(p)
                    longest = width
                slots.append(first_row + i)
                sources.append(where[id(p)])
                i += 1
            chunks.append(self.backend.prefill(uniq, slots, sources))
            self.stats.prefill_calls += 1
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def _row_settings(self, active: list[_Seq]) -> RowSettings:
        ps = [s.params for s in active]
        dev = self.device
        top_k = torch.tensor([p.top_k for p in ps], device=dev) if any(p.top_k for p in ps) else None
        top_p = (torch.tensor([p.top_p for p in ps], device=dev, dtype=torch.float32)
                 if any(p.top_p < 1.0 for p in ps) else None)
        return RowSettings(
            temperature=torch.tensor([p.temperature for p in ps], device=dev, dtype=torch.float32),
            keys=torch.tensor([s.key for s in active], device=dev, dtype=torch.long),
            steps=torch.tensor([len(s.tokens) for s in active], device=dev, dtype=torch.long),
            top_k=top_k, top_p=top_p, top_k_max=max(p.top_k for p in ps),
            all_greedy=all(p.greedy for p in ps), unit_temperature=all(p.temperature in (0.0, 1.0) for p in ps),
        )

    def _launch(self, logits: Tensor, seqs: list[_Seq], rows: RowSettings) -> _Step:
        """Sample the next token of each of `seqs` and start copying the results to the host."""
        want_lp = any(s.params.logprobs for s in seqs)
        tokens, logprobs = sample_next(logits, rows, want_logprobs=want_lp)
        # one device->host transfer per step; token ids < 2**24 are exact in float32
        packed = torch.stack([tokens.float(), logprobs]) if want_lp else tokens[None].float()
        event = None
        if packed.is_cuda:
            packed = packed.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        return _Step(seqs=seqs, tokens=tokens, host=packed, event=event)

    def _collect(self, step: _Step) -> None:
        """Record a launched step's tokens and log-probs on its sequences; mark finishes."""
        if step.event is not None:
            step.event.synchronize()
        host = step.host.tolist()
        for r, s in enumerate(step.seqs):
            if s.finish is not None:  # ended at the previous step; this token was speculative
                continue
            t = int(host[0][r])
            s.tokens.append(t)
            if s.params.logprobs:
                s.logprobs.append(host[1][r])
            if t in s.stop_ids:
                s.finish = "eos"
            elif s.params.stop and self._hit_stop_string(s):
                s.finish = "stop"
            elif len(s.tokens) >= s.max_new:
                s.finish = "length"

    # -- stop strings and text -----------------------------------------------------------------

    def _decode_text(self, s: _Seq, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=s.params.skip_special_tokens)

    def _piece(self, token: int, skip_special: bool) -> str:
        key = (token, skip_special)
        piece = self._pieces.get(key)
        if piece is None:
            piece = self._pieces[key] = self.tokenizer.decode([token], skip_special_tokens=skip_special)
        return piece

    def _hit_stop_string(self, s: _Seq) -> bool:
        """Did the last token complete a stop string? If so, cut the full text at the earliest one.

        A stop string can only be completed by a token whose text holds the stop string's last
        character, so most tokens are ruled out by a cached one-token decode. The rest decode the
        last few tokens, then the whole output to place the cut exactly. Tokens with no text of
        their own (byte pieces of a multi-byte character, SentencePiece's bare space) and stop
        strings ending in a space (SentencePiece puts it on the next token, and drops it when that
        token is decoded alone) always take the slow path.
        """
        stops = s.params.stop
        piece = self._piece(s.tokens[-1], s.params.skip_special_tokens)
        if (piece and "\ufffd" not in piece and not any(x.endswith(" ") for x in stops)
                and not any(x[-1] in piece for x in stops)):
            return False
        window = max(len(x) for x in s.params.stop) + 8  # a token carries >= 1 char, or bytes of one
        tail = self._decode_text(s, s.tokens[-window:])
        if not any(x in tail for x in s.params.stop):
            return False
        full = self._decode_text(s, s.tokens)
        cuts = [full.find(x) for x in s.params.stop if x in full]
        if not cuts:
            return False
        s.text = full[: min(cuts)]
        return True

    def _completion(self, s: _Seq) -> Completion:
        assert s.finish is not None
        if s.text is None:
            if self.tokenizer is None:
                s.text = ""
            else:
                s.text = self._decode_text(s, s.tokens[:-1] if s.finish == "eos" else s.tokens)
        return Completion(prompt_index=s.prompt_index, sample_index=s.sample_index, prompt_token_ids=s.prompt,
                          token_ids=s.tokens, logprobs=s.logprobs, text=s.text, finish_reason=s.finish)


def _fill_from_tail(keep: list[int], n: int) -> list[int]:
    """New row order after dropping rows not in `keep`: holes below len(keep) are filled by the
    surviving rows above it, so only as many cache rows move as sequences finished."""
    k, kept = len(keep), set(keep)
    tail = [r for r in keep if r >= k]
    order = [r if r in kept else tail.pop() for r in range(k)]
    assert not tail
    return order


def generate(model, tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]],
             params: SamplingParams | Sequence[SamplingParams] | None = None, **engine_kwargs) -> list[Completion]:
    """One-shot `Engine(model, tokenizer, **engine_kwargs).generate(prompts, params)`."""
    return Engine(model, tokenizer, **engine_kwargs).generate(prompts, params)
