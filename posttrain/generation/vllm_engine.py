"""vLLM as a generation backend, with the contract of `Engine.generate` (docs/VLLM.md).

    engine = make_engine("vllm", "runs/sft/final", tokenizer, tensor_parallel_size=2)
    outs = engine.generate(prompt_ids, SamplingParams(temperature=1.0, n=8, seed=0))  # list[Completion]
    engine.update_weights(policy.state_dict())   # after an optimizer step (RLVR)

What it keeps from the native engine (docs/GENERATION.md), and how:
- Log-probs. vLLM runs with `logprobs_mode="processed_logprobs"` and returns the sampled token's
  log-prob only (`logprobs=0`): log_softmax(logits.float() / T) at the token, T = 1 for greedy
  rows. That is the native convention exactly when top_p = 1 and top_k = 0 (RLVR's default).
  With top-p/top-k vLLM reports the log-prob under the truncated, renormalised distribution the
  token was drawn from; the native engine reports the full-vocabulary one. vLLM exposes no
  per-token normaliser of the kept set, so the two cannot be made equal there (a warning says so).
- Finish reasons and token ids. posttrain decides the stop tokens (`stop_token_ids`, default the
  model's EOS ids as `default_stop_token_ids` reads them) and passes them with vLLM's
  `ignore_eos=True`, so vLLM's own EOS notion stays out. A stop token ends with "eos" and stays
  in `token_ids`/`logprobs`; a stop string gives "stop" with the tokens up to and including the
  one that completed it; "length" is the budget or the context. vLLM checks stop tokens before
  the length cap and stop strings after it, the native order. `text` is decoded here from the
  token ids with the native rules (EOS left out; cut before the earliest stop string), so a
  grader sees the text the native engine would give for the same tokens.
- Seeds. Each (prompt, sample) is its own vLLM request with n = 1 and the seed
  `sequence_key(seed, prompt key, sample index)`, the key that names the native engine's stream.
  vLLM draws a seeded request's noise from its own torch.Generator, so its samples do not depend
  on the batch, the other prompts or their order (up to kernel numerics of the batch shape, and a
  preempted request, which re-runs without rewinding its generator). The draws themselves differ
  from the native engine's: the same seed gives other samples on the two backends.
- Weight updates. `update_weights` loads HF-named tensors through the workers' `reload_weights`
  (`LLM.collective_rpc`), the model's own `load_weights` (QKV / gate-up stacking, TP sharding),
  then clears the prefix cache, whose KV was computed with the old weights. With the engine core in
  this process (`in_process`, the default for tensor_parallel_size = 1) the tensors are copied
  directly, device to device; otherwise they travel through vLLM's RPC as CPU tensors.
vLLM is imported only here, inside functions: without it, constructing a VLLMEngine raises one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from posttrain.config import ConfigError, field
from posttrain.generation.engine import (Completion, Engine, FinishReason, GenerationStats, default_stop_token_ids,
                                         encode_prompts)
from posttrain.generation.sampling import SamplingParams, sequence_key

NATIVE_BACKENDS = ("auto", "fast", "hf")
_SEED_MASK = (1 << 63) - 1  # vLLM carries seeds as int64 between its processes
_CPU_KV_CACHE_GIB = 2.0  # vLLM on CPU would otherwise size its KV cache to half of the RAM
_MIN_VLLM = (0, 32)


def missing_vllm_message(config_key: str = "backend") -> str:
    return f"{config_key}=vllm needs vLLM: pip install -e .[vllm] (on CPU: see scripts/check_vllm_cpu.sh)"


@dataclasses.dataclass
class VLLMConfig:
    """vLLM engine settings (used when the backend is `vllm`)."""

    tensor_parallel_size: int = field(1, "GPUs one vLLM engine shards the model over (vLLM's tensor parallelism)")
    gpu_memory_utilization: float = field(0.5, "fraction of GPU memory vLLM takes for weights + KV cache; leave "
                                               "room for the trainer when it shares the GPU (RLVR)")
    kv_cache_gib: float | None = field(None, "KV-cache size in GiB instead of gpu_memory_utilization's "
                                             "(default on CPU: 2, or $VLLM_CPU_KVCACHE_SPACE)")
    max_model_len: int | None = field(None, "context length (default: the model's)")
    enforce_eager: bool = field(False, "no torch.compile / CUDA graphs: starts faster, decodes slower")
    in_process: bool | None = field(None, "run vLLM's engine core in this process, so update_weights copies "
                                          "tensors directly (null: when tensor_parallel_size = 1)")

    def validate(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"vllm.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            raise ConfigError(f"vllm.kv_cache_gib must be > 0 (or null), got {self.kv_cache_gib}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError(f"vllm.max_model_len must be >= 2 (or null), got {self.max_model_len}")
        if self.in_process and self.tensor_parallel_size > 1:
            raise ConfigError("vllm.in_process=true needs tensor_parallel_size=1 (vLLM runs one process per GPU)")

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_engine(backend: str, model, tokenizer=None, *, max_batch_size: int = 64, vllm: VLLMConfig | None = None,
                config_key: str = "backend", **engine_kwargs):
    """The generation engine for a backend name: `native` (= `auto`), `auto`, `fast` or `hf` build
    posttrain's `Engine` over an in-memory model; `vllm` builds a `VLLMEngine` from the model or a
    path with the `vllm` settings. `engine_kwargs` go to the chosen engine's constructor;
    `config_key` names the setting in errors (e.g. "rollout.backend")."""
    if backend == "native":
        backend = "auto"
    if backend in NATIVE_BACKENDS:
        return Engine(model, tokenizer, backend=backend, max_batch_size=max_batch_size, **engine_kwargs)
    if backend != "vllm":
        raise ConfigError(f"{config_key} must be one of native, {', '.join(NATIVE_BACKENDS)}, vllm; got {backend!r}")
    return VLLMEngine(model, tokenizer, max_batch_size=max_batch_size, config_key=config_key,
                      **(vllm or VLLMConfig()).options(), **engine_kwargs)


# ----------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """One (prompt, sample) as a vLLM request."""

    prompt_index: int
    sample_index: int
    prompt: list[int]
    params: SamplingParams
    stop_ids: tuple[int, ...]
    max_tokens: int
    seed: int | None  # None for greedy rows


def plan_requests(prompts: list[list[int]], plist: list[SamplingParams], default_stop_ids: Sequence[int],
                  max_positions: int, prompt_keys: Sequence[int] | None = None,
                  has_tokenizer: bool = True) -> list[Request]:
    """Every (prompt, sample) with its stop tokens, budget and seed, in (prompt, sample) order.
    Seeds: one per SamplingParams object (`seed=None` draws it from torch's global generator, as
    the native engine does), then the native engine's per-sequence key of it."""
    if prompt_keys is not None and len(prompt_keys) != len(prompts):
        raise ValueError(f"generate: got {len(prompt_keys)} prompt_keys for {len(prompts)} prompts")
    seeds: dict[int, int] = {}
    out = []
    for i, (ids, p) in enumerate(zip(prompts, plist)):
        if p.stop and not has_tokenizer:
            raise ValueError(f"generate: prompt {i} has stop strings but the engine has no tokenizer")
        if len(ids) >= max_positions:
            raise ValueError(f"generate: prompt {i} has {len(ids)} tokens, the model's limit is {max_positions}")
        if id(p) not in seeds:
            seeds[id(p)] = p.seed if p.seed is not None else int(torch.randint(0, 2**62, ()).item())
        stop_ids = () if p.ignore_eos else tuple(p.stop_token_ids if p.stop_token_ids is not None
                                                 else default_stop_ids)
        key = i if prompt_keys is None else int(prompt_keys[i])
        for j in range(p.n):
            seed = None if p.greedy else sequence_key(seeds[id(p)], key, j) & _SEED_MASK
            out.append(Request(i, j, ids, p, stop_ids, min(p.max_new_tokens, max_positions - len(ids)), seed))
    return out


def vllm_sampling_kwargs(r: Request) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one request."""
    p = r.params
    greedy = p.greedy
    return dict(n=1, temperature=0.0 if greedy else p.temperature, top_p=1.0 if greedy else p.top_p,
                top_k=0 if greedy else p.top_k, max_tokens=r.max_tokens, seed=r.seed,
                stop=list(p.stop) or None, stop_token_ids=list(r.stop_ids),
                ignore_eos=True,  # our stop_token_ids are the whole stop set (docstring)
                logprobs=0 if p.logprobs else None, skip_special_tokens=p.skip_special_tokens,
                detokenize=bool(p.stop), include_stop_str_in_output=False)


def _finish_reason(o, stop_ids: Sequence[int]) -> FinishReason:
    reason, stop_reason = getattr(o, "finish_reason", None), getattr(o, "stop_reason", None)
    if reason == "stop":
        if isinstance(stop_reason, str):
            return "stop"
        if o.token_ids and o.token_ids[-1] in stop_ids:
            return "eos"
        raise RuntimeError(f"vLLM stopped on {stop_reason!r}, which is neither a stop string nor one of the "
                           f"stop tokens {list(stop_ids)}")
    if reason == "length":
        return "length"
    raise RuntimeError(f"vLLM request ended with finish_reason={reason!r} (aborted or failed)")


def _sampled_logprob(entry, token: int) -> float:
    try:
        return float(entry[token].logprob)
    except (KeyError, TypeError, AttributeError):
        raise RuntimeError(f"vLLM returned no log-prob for the sampled token {token}") from None


def to_completion(output, r: Request, decode: Callable[[list[int], bool], str] | None) -> Completion:
    """One vLLM `RequestOutput` (n = 1) as the native engine's Completion for request `r`.

    `decode(ids, skip_special_tokens)` is the tokenizer's decode (None: no tokenizer, text "")."""
    o = output.outputs[0]
    tokens = [int(t) for t in o.token_ids]
    if not tokens:
        raise RuntimeError(f"vLLM returned no tokens for prompt {r.prompt_index}, sample {r.sample_index}")
    finish = _finish_reason(o, r.stop_ids)
    logprobs: list[float] = []
    if r.params.logprobs:
        if o.logprobs is None or len(o.logprobs) != len(tokens):
            raise RuntimeError(f"vLLM returned {0 if o.logprobs is None else len(o.logprobs)} log-prob entries "
                               f"for {len(tokens)} tokens")
        logprobs = [_sampled_logprob(e, t) for e, t in zip(o.logprobs, tokens)]
    if decode is None:
        text = ""
    elif finish == "eos":
        text = decode(tokens[:-1], r.params.skip_special_tokens)
    else:
        text = decode(tokens, r.params.skip_special_tokens)
        if finish == "stop":
            cuts = [text.find(s) for s in r.params.stop if s in text]
            # vLLM matched on its incremental decode; if the full decode differs, keep vLLM's cut
            text = text[: min(cuts)] if cuts else o.text
    return Completion(prompt_index=r.prompt_index, sample_index=r.sample_index, prompt_token_ids=list(r.prompt),
                      token_ids=tokens, logprobs=logprobs, text=text, finish_reason=finish)


# ----------------------------------------------------------------------------------- the engine


@contextlib.contextmanager
def _process_state_kept():
    """vLLM seeds the global RNGs (random, numpy, torch) when it starts a worker, draws noise for
    the unseeded rows of a batch from torch's generator, and on CPU replaces torch.set_num_threads.
    With the engine core in this process that would reach the trainer sharing it: put them back."""
    import random

    import numpy as np

    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    set_threads = torch.set_num_threads
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.set_num_threads = set_threads


def _import_vllm(config_key: str):
    try:
        import vllm
        from vllm.inputs import TokensPrompt
    except ImportError:
        raise ConfigError(missing_vllm_message(config_key)) from None
    version = tuple(int(x) for x in vllm.__version__.split(".")[:2] if x.isdigit())
    if version < _MIN_VLLM:  # reload_weights(weights_iterator=...) and logprobs_mode as used here
        raise ConfigError(f"{config_key}=vllm needs vLLM >= {'.'.join(map(str, _MIN_VLLM))}, found {vllm.__version__}")
    return vllm, TokensPrompt


def _torch_dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


class VLLMEngine:
    """`Engine.generate` on a vLLM `LLM`: built from a model path (HF directory, embedded name, hub
    id, PEFT adapter directory) or an in-memory model, which is saved to a temporary HF directory
    first (kept until `close()`). An in-memory model without a tokenizer takes and returns token
    ids only (no text, no stop strings), as `Engine(model, None)` does.

    dtype: "auto" = the in-memory model's dtype, else fp32 on CPU and bf16 on CUDA (as the native
    engine's callers load models). max_batch_size: vLLM's max_num_seqs (sequences decoded together).
    kv_cache_gib: vLLM's kv_cache_memory_bytes; on CPU it defaults to 2 GiB, or vLLM's
    VLLM_CPU_KVCACHE_SPACE when set (vLLM alone would take half the RAM). Other keyword arguments
    go to `vllm.LLM` as they are.
    """

    backend_name = "vllm"

    def __init__(self, model, tokenizer=None, *, dtype: str | torch.dtype = "auto", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.5, kv_cache_gib: float | None = None,
                 max_model_len: int | None = None, enforce_eager: bool = False, in_process: bool | None = None,
                 seed: int = 0, max_batch_size: int | None = None, device: str = "auto",
                 config_key: str = "backend", **llm_kwargs):
        vllm, self._TokensPrompt = _import_vllm(config_key)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise ConfigError(f"{config_key}=vllm runs one vLLM engine per process group, not one per torchrun "
                              f"rank: launch without torchrun and shard with vllm.tensor_parallel_size")
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.in_process = tensor_parallel_size == 1 if in_process is None else in_process
        self._tmp: str | None = None
        self._source_model = None if isinstance(model, (str, os.PathLike)) else model
        self._model = self._source_model
        try:
            self._start(vllm, model, tokenizer, dtype, tensor_parallel_size, gpu_memory_utilization, kv_cache_gib,
                        max_model_len, enforce_eager, seed, max_batch_size, llm_kwargs)
        except BaseException:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self._SamplingParams = vllm.SamplingParams
        self.max_positions = int(self.llm.model_config.max_model_len)
        self.weight_version = 0
        self.stats = GenerationStats()
        self._warned_truncation = False

    # -- construction ------------------------------------------------------------------------

    def _start(self, vllm, model, tokenizer, dtype, tensor_parallel_size, gpu_memory_utilization, kv_cache_gib,
               max_model_len, enforce_eager, seed, max_batch_size, llm_kwargs) -> None:
        path, tokenizer, torch_dtype = self._model_dir(model, tokenizer, dtype)
        self.model_path, self.tokenizer, self.dtype = path, tokenizer, torch_dtype
        self.default_stop_ids = self._stop_ids(path, tokenizer)
        self._weight_names = None if self._source_model is None else set(self._source_model.state_dict())
        tok_path = None
        if tokenizer is not None and not os.path.isfile(os.path.join(path, "tokenizer_config.json")):
            tok_path = self._tempdir("tokenizer")
            tokenizer.save_pretrained(tok_path)
        from vllm.platforms import current_platform

        if kv_cache_gib is None and current_platform.is_cpu() and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            kv_cache_gib = _CPU_KV_CACHE_GIB
        if kv_cache_gib is not None:
            llm_kwargs.setdefault("kv_cache_memory_bytes", int(kv_cache_gib * 2**30))
        if max_batch_size is not None:
            llm_kwargs.setdefault("max_num_seqs", max_batch_size)
        if tokenizer is None:
            llm_kwargs.setdefault("skip_tokenizer_init", True)
        env_before = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if self.in_process else "1"
        try:
            with _process_state_kept():
                self.llm = vllm.LLM(model=path, tokenizer=tok_path, dtype=_torch_dtype_name(torch_dtype),
                                    tensor_parallel_size=tensor_parallel_size,
                                    gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                                    enforce_eager=enforce_eager, seed=seed, logprobs_mode="processed_logprobs",
                                    **llm_kwargs)
        finally:
            if env_before is None:
                os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
            else:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = env_before

    def _tempdir(self, what: str) -> str:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="posttrain-vllm-")
        path = os.path.join(self._tmp, what)
        os.makedirs(path, exist_ok=True)
        return path

    def _model_dir(self, model, tokenizer, dtype):
        """(an HF directory vLLM can load, the tokenizer, the dtype to run in)."""
        from posttrain.models import default_dtype, is_adapter_dir, load_model, parse_dtype, resolve_model_path

        if isinstance(dtype, str) and dtype != "auto":
            dtype = parse_dtype(dtype)
        if self._source_model is not None:
            if getattr(model, "peft_config", None) is not None:
                raise ValueError("VLLMEngine: give the merged model, not a PEFT model with adapters")
            if dtype == "auto":
                dtype = next(model.parameters()).dtype
            path = self._tempdir("model")
            model.save_pretrained(path, safe_serialization=True)
            if tokenizer is not None:  # without one: token ids in and out, as Engine(model, None)
                tokenizer.save_pretrained(path)
            return path, tokenizer, dtype
        dtype = default_dtype(self.device) if dtype == "auto" else dtype
        path = resolve_model_path(str(model))  # embedded name -> its HF directory; local dirs checked
        if is_adapter_dir(path):  # vLLM serves plain weights: merge once, like posttrain's loaders
            merged = load_model(path, dtype=dtype, device="cpu")
            if tokenizer is None:
                from posttrain.models import load_tokenizer

                tokenizer = load_tokenizer(path)
            out = self._tempdir("model")
            merged.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
            del merged
            path = out
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
        return path, tokenizer, dtype

    def _stop_ids(self, path: str, tokenizer) -> tuple[int, ...]:
        if self._source_model is not None:
            return default_stop_token_ids(self._source_model, tokenizer)
        from transformers import AutoConfig, GenerationConfig

        try:
            gen = GenerationConfig.from_pretrained(path)
        except (OSError, ValueError):  # no generation_config.json: HF models fall back to config.json
            gen = None
        return default_stop_token_ids(SimpleNamespace(generation_config=gen, config=AutoConfig.from_pretrained(path)),
                                      tokenizer)

    @property
    def model(self):
        """The torch model (the in-memory one given, else loaded once from the path on first use):
        what log-likelihood tasks score with, since vLLM returns no prompt scores here."""
        if self._model is None:
            from posttrain.models import load_model

            self._model = load_model(self.model_path, dtype=self.dtype, device=self.device).eval()
        return self._model

    # -- public ------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str] | Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, add_special_tokens: bool = False, prompt_keys: Sequence[int] | None = None) -> list[Completion]:
        """As `Engine.generate`: every prompt `params.n` times, sorted by (prompt, sample) index."""
        start = time.perf_counter()
        prompts = list(prompts)
        plist = Engine._params_per_prompt(params, len(prompts))
        token_prompts = self._encode(prompts, add_special_tokens)
        requests = plan_requests(token_prompts, plist, self.default_stop_ids, self.max_positions, prompt_keys,
                                 has_tokenizer=self.tokenizer is not None)
        self.stats = GenerationStats(prompt_tokens=sum(len(p) for p in token_prompts))
        if not requests:
            return []
        self._warn_truncated_logprobs(plist)
        sps = [self._SamplingParams(**vllm_sampling_kwargs(r)) for r in requests]
        inputs = [self._TokensPrompt(prompt_token_ids=list(r.prompt)) for r in requests]
        with _process_state_kept():
            outputs = self.llm.generate(inputs, sps, use_tqdm=False)
        assert len(outputs) == len(requests)
        outs = [to_completion(o, r, self._decode if self.tokenizer is not None else None)
                for o, r in zip(outputs, requests)]
        self.stats.generated_tokens = sum(len(o.token_ids) for o in outs)
        self.stats.seconds = time.perf_counter() - start
        return outs

    def update_weights(self, named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights (HF parameter names, e.g. `policy.state_dict()` or LoRA's merged state)
        into the running engine, then drop the prefix cache computed with the old ones."""
        items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
        weights = [(name, t.detach() if self.in_process else t.detach().to("cpu")) for name, t in items]
        if not weights:
            raise ValueError("update_weights: no tensors given")
        if self._weight_names is not None:
            unknown = [n for n, _ in weights if n not in self._weight_names]
            if unknown:
                raise ValueError(f"update_weights: {len(unknown)} names are not parameters of the model the engine "
                                 f"was built from, e.g. {unknown[:3]} (PEFT names? pass the merged state dict)")
        with _process_state_kept():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        self.weight_version += 1

    def close(self) -> None:
        """Stop vLLM's engine and delete the temporary model directory."""
        core = getattr(getattr(self, "llm", None), "llm_engine", None)
        shutdown = getattr(getattr(core, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # -- helpers -----------------------------------------------------------------------------

    def _encode(self, prompts: list, add_special_tokens: bool) -> list[list[int]]:
        return encode_prompts(self.tokenizer, prompts, add_special_tokens)

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def _warn_truncated_logprobs(self, plist: list[SamplingParams]) -> None:
        if self._warned_truncation or not any(p.logprobs and not p.greedy and (p.top_p < 1 or p.top_k > 0)
                                              for p in plist):
            return
        self._warned_truncation = True
        warnings.warn("vLLM backend with top_p < 1 or top_k > 0: log-probs are those of the truncated, renormalised "
                      "distribution the tokens were drawn from, not the full-vocabulary ones the native engine and "
                      "the trainer compute (docs/VLLM.md)", stacklevel=3)
