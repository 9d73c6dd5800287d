"""vLLM as a generation backend (posttrain/generation/vllm_engine.py, docs/VLLM.md).

Without vLLM (default CI): the config keys, the one-line error when vLLM is missing, and the
conversion of vLLM-shaped outputs into Completions, checked on hand-built outputs; `generate` and
`update_weights` against a fake `LLM` that records what it is asked.

With vLLM (`-m vllm`, run by scripts/check_vllm_cpu.sh in its own venv): one real engine over a
tiny Llama (head size 64: vLLM's CPU attention takes >= 32) against the native engine and the
trainer's log-probs, weight updates, the server, and RLVR with rollout.backend=vllm end to end.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from posttrain.config import ConfigError, load_config
from posttrain.generation import Engine, SamplingParams
from posttrain.generation.sampling import sequence_key
from posttrain.generation.vllm_engine import (VLLMConfig, VLLMEngine, make_engine, plan_requests, to_completion,
                                              vllm_sampling_kwargs)

# ------------------------------------------------------------------------------ fakes of vLLM's outputs

VOCAB = {5: "Hel", 6: "lo", 7: " wor", 8: "ld", 9: "!", 2: "</s>"}


def decode(ids, skip_special_tokens=True):
    return "".join("" if (t == 2 and skip_special_tokens) else VOCAB[t] for t in ids)


def lp(value, rank=1):
    return SimpleNamespace(logprob=value, rank=rank)


def fake_output(tokens, finish, stop_reason=None, logprobs=None, text="<vllm text>"):
    o = SimpleNamespace(token_ids=tokens, finish_reason=finish, stop_reason=stop_reason, logprobs=logprobs, text=text)
    return SimpleNamespace(outputs=[o])


def request(params=SamplingParams(), stop_ids=(2,), prompt=(1, 4)):
    return plan_requests([list(prompt)], [params], stop_ids, max_positions=64)[0]


# ------------------------------------------------------------------------------ conversion (no vLLM)

def test_eos_is_kept_in_tokens_and_logprobs_and_left_out_of_text():
    # vLLM stopped on stop token 2 (stop_reason = the token id); the sampled token's entry is picked
    # from dicts that also hold the top-1 alternative
    entries = [{5: lp(-0.5)}, {6: lp(-1.25), 9: lp(-0.75)}, {2: lp(-2.0)}]
    c = to_completion(fake_output([5, 6, 2], "stop", 2, entries), request(), decode)
    assert (c.token_ids, c.logprobs, c.text, c.finish_reason) == ([5, 6, 2], [-0.5, -1.25, -2.0], "Hello", "eos")
    assert (c.prompt_index, c.sample_index, c.prompt_token_ids) == (0, 0, [1, 4])


def test_stop_string_cuts_text_but_keeps_the_tokens_that_made_it():
    params = SamplingParams(stop=("or", "l"))
    entries = [{t: lp(-1.0)} for t in (5, 6, 7)]
    c = to_completion(fake_output([5, 6, 7], "stop", "or", entries), request(params), decode)
    # "Hello wor": "l" first occurs at 2, before "or" at 7 -> cut at the earliest stop string
    assert (c.token_ids, c.text, c.finish_reason) == ([5, 6, 7], "He", "stop")


def test_length_and_no_logprobs():
    params = SamplingParams(logprobs=False, max_new_tokens=4)
    c = to_completion(fake_output([5, 6, 7, 8], "length"), request(params), decode)
    assert (c.token_ids, c.logprobs, c.text, c.finish_reason) == ([5, 6, 7, 8], [], "Hello world", "length")
    c = to_completion(fake_output([5, 2], "length"), request(params, stop_ids=()), decode)  # ignore_eos: 2 is text
    assert (c.text, c.finish_reason) == ("Hel", "length")
    c = to_completion(fake_output([5, 2], "length"), request(SamplingParams(logprobs=False, skip_special_tokens=False),
                                                            stop_ids=()), decode)
    assert c.text == "Hel</s>"


def test_no_tokenizer_gives_empty_text():
    c = to_completion(fake_output([5, 2], "stop", 2, [{5: lp(-1.0)}, {2: lp(-1.0)}]), request(), None)
    assert (c.text, c.finish_reason) == ("", "eos")


def test_bad_outputs_fail_loudly():
    with pytest.raises(RuntimeError, match="abort"):
        to_completion(fake_output([5], "abort", None, [{5: lp(-1.0)}]), request(), decode)
    with pytest.raises(RuntimeError, match="neither a stop string"):  # stopped on a token we did not ask for
        to_completion(fake_output([5, 7], "stop", None, [{5: lp(-1.0)}, {7: lp(-1.0)}]), request(), decode)
    with pytest.raises(RuntimeError, match="no log-prob for the sampled token 6"):
        to_completion(fake_output([5, 6], "length", None, [{5: lp(-1.0)}, {9: lp(-1.0)}]), request(), decode)
    with pytest.raises(RuntimeError, match="1 log-prob entries for 2 tokens"):
        to_completion(fake_output([5, 6], "length", None, [{5: lp(-1.0)}]), request(), decode)


def test_requests_seeds_stops_and_budgets():
    a = SamplingParams(n=2, seed=7, temperature=1.0, max_new_tokens=10)
    g = SamplingParams(temperature=0.0, max_new_tokens=100, stop_token_ids=(9,))
    e = SamplingParams(ignore_eos=True, seed=1, max_new_tokens=3)
    reqs = plan_requests([[1, 2, 3], [4] * 60, [5]], [a, g, e], (2, 3), max_positions=64, prompt_keys=[10, 11, 12])
    assert [(r.prompt_index, r.sample_index) for r in reqs] == [(0, 0), (0, 1), (1, 0), (2, 0)]
    # the native engine's stream key of (seed, prompt key, sample), as a 63-bit vLLM seed
    assert reqs[0].seed == sequence_key(7, 10, 0) & (2**63 - 1) and reqs[1].seed == sequence_key(7, 10, 1) & (2**63 - 1)
    assert reqs[2].seed is None and reqs[2].max_tokens == 4  # greedy; the context left after 60 prompt tokens
    assert [r.stop_ids for r in reqs] == [(2, 3), (2, 3), (9,), ()]
    with pytest.raises(ValueError, match="prompt 0 has 64 tokens, the model's limit is 64"):
        plan_requests([[1] * 64], [a], (2,), max_positions=64)
    with pytest.raises(ValueError, match="stop strings but the engine has no tokenizer"):
        plan_requests([[1]], [SamplingParams(stop=("x",))], (2,), 64, has_tokenizer=False)
    torch.manual_seed(0)  # seed=None: drawn once per params object from torch's generator, as natively
    s1 = [r.seed for r in plan_requests([[1], [2]], [SamplingParams(n=2)] * 2, (2,), 64)]
    torch.manual_seed(0)
    assert s1 == [r.seed for r in plan_requests([[1], [2]], [SamplingParams(n=2)] * 2, (2,), 64)]
    assert len(set(s1)) == 4


def test_vllm_sampling_kwargs():
    r = request(SamplingParams(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=8, seed=3, stop=("\n",)), (2, 3))
    kw = vllm_sampling_kwargs(r)
    assert kw == dict(n=1, temperature=0.7, top_p=0.9, top_k=5, max_tokens=8, seed=r.seed, stop=["\n"],
                      stop_token_ids=[2, 3], ignore_eos=True, logprobs=0, skip_special_tokens=True, detokenize=True,
                      include_stop_str_in_output=False)
    kw = vllm_sampling_kwargs(request(SamplingParams(temperature=0.0, top_p=0.5, logprobs=False)))
    assert (kw["temperature"], kw["top_p"], kw["seed"], kw["stop"], kw["logprobs"], kw["detokenize"]) == \
        (0.0, 1.0, None, None, None, False)


# ------------------------------------------------------------------------------ the engine on a fake LLM

class FakeLLM:
    """Answers each request with its own prompt's last token repeated, then stop token 2."""

    def __init__(self):
        self.calls, self.resets = [], 0

    def generate(self, inputs, sps, use_tqdm=False):
        torch.rand(3)  # vLLM draws noise from the global generator: the engine must put it back
        self.calls.append(("generate", inputs, sps))
        outs = []
        for x, sp in zip(inputs, sps):
            toks = [x["prompt_token_ids"][-1]] * (sp["max_tokens"] - 1) + [2]
            outs.append(fake_output(toks, "stop", 2, [{t: lp(-0.5)} for t in toks]))
        return outs

    def collective_rpc(self, method, kwargs=None):
        self.calls.append((method, kwargs))

    def reset_prefix_cache(self):
        self.resets += 1


def fake_engine(weight_names=None):
    e = VLLMEngine.__new__(VLLMEngine)  # everything __init__ sets, without vLLM
    e.llm, e._SamplingParams, e._TokensPrompt = FakeLLM(), dict, dict
    e.tokenizer = SimpleNamespace(decode=decode)
    e.default_stop_ids, e.max_positions, e.in_process, e._weight_names = (2,), 64, True, weight_names
    e.weight_version, e._warned_truncation = 0, False
    return e


def test_generate_contract_on_a_fake_llm():
    e = fake_engine()
    rng = torch.random.get_rng_state()
    outs = e.generate([[1, 5], [1, 6]], SamplingParams(n=2, max_new_tokens=3, seed=4), prompt_keys=[3, 8])
    assert torch.equal(rng, torch.random.get_rng_state())
    assert [(o.prompt_index, o.sample_index, o.token_ids, o.text, o.finish_reason) for o in outs] == [
        (0, 0, [5, 5, 2], "HelHel", "eos"), (0, 1, [5, 5, 2], "HelHel", "eos"),
        (1, 0, [6, 6, 2], "lolo", "eos"), (1, 1, [6, 6, 2], "lolo", "eos")]
    _, inputs, sps = e.llm.calls[0]
    assert [x["prompt_token_ids"] for x in inputs] == [[1, 5], [1, 5], [1, 6], [1, 6]]
    assert [sp["seed"] for sp in sps] == [sequence_key(4, k, j) & (2**63 - 1) for k in (3, 8) for j in (0, 1)]
    assert e.stats.generated_tokens == 12 and e.stats.prompt_tokens == 4
    with pytest.warns(UserWarning, match="truncated, renormalised"):
        e.generate([[1, 5]], SamplingParams(top_p=0.9, max_new_tokens=2))


def test_update_weights_reloads_in_place_and_drops_the_prefix_cache():
    e = fake_engine(weight_names={"model.embed_tokens.weight", "lm_head.weight"})
    w = torch.ones(2, 2, requires_grad=True)
    e.update_weights({"model.embed_tokens.weight": w})
    method, kwargs = e.llm.calls[-1]
    assert method == "reload_weights" and [n for n, _ in kwargs["weights_iterator"]] == ["model.embed_tokens.weight"]
    assert not kwargs["weights_iterator"][0][1].requires_grad
    assert (e.llm.resets, e.weight_version) == (1, 1)
    with pytest.raises(ValueError, match="PEFT names"):
        e.update_weights({"base_model.model.model.embed_tokens.weight": w})
    with pytest.raises(ValueError, match="no tensors"):
        e.update_weights({})


# ------------------------------------------------------------------------------ config and the missing-vLLM error

def test_rollout_backend_config(tmp_path):
    from posttrain.recipes.rlvr import RLVRConfig

    base = [f"data.paths=[{tmp_path / 'rows.jsonl'}]"]
    cfg = load_config(RLVRConfig, None, base + ["rollout.backend=vllm", "rollout.vllm.tensor_parallel_size=2",
                                                "rollout.vllm.gpu_memory_utilization=0.3",
                                                "rollout.vllm.max_model_len=4096"])
    assert (cfg.rollout.backend, cfg.rollout.engine_backend) == ("vllm", "auto")
    assert cfg.rollout.vllm == VLLMConfig(tensor_parallel_size=2, gpu_memory_utilization=0.3, max_model_len=4096)
    assert load_config(RLVRConfig, None, base).rollout.backend == "native"
    for bad, msg in [("rollout.backend=sglang", "rollout.backend"), ("rollout.vllm.gpu_memory_utilization=1.5",
                                                                     "gpu_memory_utilization"),
                     ("rollout.mode=async", "rollout.mode=sync")]:
        with pytest.raises(ValueError, match=msg):
            load_config(RLVRConfig, None, base + ["rollout.backend=vllm", bad])
    with pytest.raises(ValueError, match="lora.generation=merged"):
        load_config(RLVRConfig, None, base + ["rollout.backend=vllm", "model.lora.enabled=true",
                                              "model.lora.generation=adapter"])


def test_eval_serve_and_endpoint_accept_vllm():
    from posttrain.generation.llm_client import EndpointConfig, resolve_endpoint
    from posttrain.generation.server import ServeConfig
    from posttrain.recipes.eval import EvalConfig

    assert load_config(EvalConfig, None, ["backend=vllm", "vllm.enforce_eager=true"]).vllm.enforce_eager
    assert load_config(ServeConfig, None, ["backend=vllm"]).backend == "vllm"
    with pytest.raises(ConfigError):
        load_config(ServeConfig, None, ["backend=vllm2"])
    ep = EndpointConfig(checkpoint="smollm2-135m", backend="vllm")
    local = {("smollm2-135m", "model", "vllm"): SimpleNamespace(model="m")}
    assert resolve_endpoint(ep, local).identity.endswith("|backend:vllm")  # its cache is not the native one's


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError


def test_missing_vllm_is_one_clear_line(no_vllm, tokenizer):
    with pytest.raises(ConfigError) as err:
        make_engine("vllm", "smollm2-135m", tokenizer, config_key="rollout.backend")
    assert str(err.value) == ("rollout.backend=vllm needs vLLM: pip install -e .[vllm] (on CPU: see "
                              "scripts/check_vllm_cpu.sh)")
    from posttrain.generation.server import ServeConfig, load_service

    with pytest.raises(ConfigError, match=r"^backend=vllm needs vLLM"):
        load_service(ServeConfig(model="smollm2-135m", backend="vllm"))


def test_make_engine_native_and_bad_names():
    from conftest import tiny_model

    e = make_engine("native", tiny_model(), None, max_batch_size=3)
    assert isinstance(e, Engine) and e.backend_name == "fast" and e.max_batch_size == 3
    assert make_engine("hf", tiny_model(), None).backend_name == "hf"
    with pytest.raises(ConfigError, match="rollout.backend must be one of"):
        make_engine("tgi", tiny_model(), None, config_key="rollout.backend")


# ============================================================================== with vLLM

def tiny_llama(seed=0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    cfg._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def real(tokenizer):
    pytest.importorskip("vllm")
    model = tiny_llama()
    engine = VLLMEngine(model, tokenizer, enforce_eager=True, kv_cache_gib=0.25, max_batch_size=16)
    yield SimpleNamespace(model=model, engine=engine, native=Engine(model, tokenizer, max_batch_size=16))
    engine.close()


def chat_prompts(tokenizer, n=6):
    qs = ["What is 2 + 2?", "Name a colour.", "Write a haiku about rain.", "Hi!", "Count to five.",
          "Why is the sky blue? Explain step by step, at length."][:n]
    return [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                    tokenize=False), add_special_tokens=False)["input_ids"] for q in qs]


def trainer_logprobs(model, out, temperature):
    from posttrain.losses.logprobs import token_logprobs

    seq = torch.tensor([out.prompt_token_ids + out.token_ids])
    with torch.no_grad():
        logits = model(seq).logits
    labels = seq.clone()
    labels[:, : len(out.prompt_token_ids)] = -100
    return token_logprobs(logits, labels, shift=True, temperature=temperature or 1.0)[0, len(out.prompt_token_ids) - 1:]


def as_tuple(c):
    return c.prompt_index, c.sample_index, c.token_ids, c.text, c.finish_reason


@pytest.mark.vllm
def test_greedy_equals_native_and_logprobs_equal_the_trainers(real, tokenizer):
    prompts = chat_prompts(tokenizer)
    params = SamplingParams(temperature=0.0, max_new_tokens=24, ignore_eos=True)
    ours, native = real.engine.generate(prompts, params), real.native.generate(prompts, params)
    assert [as_tuple(c) for c in ours] == [as_tuple(c) for c in native]
    for c, n in zip(ours, native):
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(n.logprobs), atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.tensor(c.logprobs), trainer_logprobs(real.model, c, 0.0), atol=1e-4, rtol=0)


@pytest.mark.vllm
@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_sampled_logprobs_are_tempered_like_the_trainers(real, tokenizer, temperature):
    # processed_logprobs: log_softmax(logits / T) at the sampled token, what train.tis_cap compares against
    params = SamplingParams(temperature=temperature, max_new_tokens=12, n=2, seed=5, ignore_eos=True)
    for c in real.engine.generate(chat_prompts(tokenizer, 3), params):
        torch.testing.assert_close(torch.tensor(c.logprobs), trainer_logprobs(real.model, c, temperature),
                                   atol=1e-4, rtol=0)


@pytest.mark.vllm
def test_seeds_and_n_samples_reproducible_and_batch_independent(real, tokenizer):
    prompts = chat_prompts(tokenizer, 4)
    params = SamplingParams(temperature=1.0, max_new_tokens=10, n=3, seed=11, ignore_eos=True)
    a = real.engine.generate(prompts, params)
    assert [(c.prompt_index, c.sample_index) for c in a] == [(i, j) for i in range(4) for j in range(3)]
    assert len({tuple(c.token_ids) for c in a[:3]}) > 1  # the samples of one prompt differ
    assert [c.token_ids for c in real.engine.generate(prompts, params)] == [c.token_ids for c in a]
    alone = real.engine.generate([prompts[2]], params, prompt_keys=[2])  # prompt 2 without its batch-mates
    assert [c.token_ids for c in alone] == [c.token_ids for c in a[6:9]]
    other = real.engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=10, n=3, seed=12,
                                                         ignore_eos=True))
    assert [c.token_ids for c in other] != [c.token_ids for c in a]


@pytest.mark.vllm
def test_stop_strings_stop_tokens_and_length_match_the_native_engine(real, tokenizer):
    prompts = chat_prompts(tokenizer)
    free = real.engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=24, ignore_eos=True))
    # stop strings and a stop token taken from the middle of the greedy outputs, so that they fire
    middles = [c.text[len(c.text) // 2:][:2] for c in free if len(c.text) > 6]
    stops = tuple(sorted({m for m in middles if m.strip()}))
    token = free[0].token_ids[10]
    finishes = set()
    for params in (SamplingParams(temperature=0.0, max_new_tokens=24, stop=stops),
                   SamplingParams(temperature=0.0, max_new_tokens=24, stop_token_ids=(token,)),
                   SamplingParams(temperature=0.0, max_new_tokens=7, ignore_eos=True)):
        ours, native = real.engine.generate(prompts, params), real.native.generate(prompts, params)
        assert [as_tuple(c) for c in ours] == [as_tuple(c) for c in native], params
        finishes |= {c.finish_reason for c in ours}
    assert {"stop", "eos", "length"} <= finishes
    eos = real.engine.generate(prompts[:1], SamplingParams(temperature=0.0, max_new_tokens=24,
                                                           stop_token_ids=(token,)))[0]
    assert eos.finish_reason == "eos" and eos.token_ids[-1] == token and len(eos.token_ids) <= 11


@pytest.mark.vllm
def test_update_weights_changes_generation_to_the_new_models(real, tokenizer):
    prompts = chat_prompts(tokenizer, 4)
    params = SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)
    before = real.engine.generate(prompts, params)
    perturbed = tiny_llama(seed=1)
    with torch.no_grad():  # sharper than the random init, whose greedy output is the same "\n" run for any seed
        for w in perturbed.parameters():
            w.mul_(4.0)
    try:
        real.engine.update_weights(perturbed.state_dict())
        after = real.engine.generate(prompts, params)
        native = Engine(perturbed, tokenizer).generate(prompts, params)
        assert [c.token_ids for c in after] == [c.token_ids for c in native]
        assert [c.token_ids for c in after] != [c.token_ids for c in before]
        assert max(abs(a - b) for c, d in zip(after, before) for a, b in zip(c.logprobs, d.logprobs)) > 0.1
        for c, n in zip(after, native):
            torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(n.logprobs), atol=1e-4, rtol=0)
    finally:
        real.engine.update_weights(real.model.state_dict())
    assert [c.token_ids for c in real.engine.generate(prompts, params)] == [c.token_ids for c in before]


@pytest.mark.vllm
def test_serve_over_the_vllm_engine(real, tokenizer):
    from posttrain.generation.server import ChatService

    service = ChatService(real.engine, tokenizer, "tiny", batch_window_ms=1)
    service.close = service.batcher.close  # the engine is the module's: keep it open
    try:
        assert service.context == 512
        ids = service.encode_chat([{"role": "user", "content": "Hi"}])
        outs = service.submit(ids, SamplingParams(temperature=0.0, max_new_tokens=5)).result(timeout=120)
        native = real.native.generate([ids], SamplingParams(temperature=0.0, max_new_tokens=5))
        assert [as_tuple(c) for c in outs] == [as_tuple(c) for c in native]
    finally:
        service.close()


@pytest.mark.vllm
def test_rlvr_with_the_vllm_backend_keeps_generator_and_trainer_in_sync(tokenizer, tmp_path):
    pytest.importorskip("vllm")
    from posttrain.recipes.rlvr import RLVRConfig, main
    from posttrain.train.metrics import read_metrics

    model_dir = tmp_path / "tiny"
    tiny_llama().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    words = json.dumps({"func_name": "validate_word_constraint", "N": 5, "quantifier": "at least"})
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"messages": [{"role": "user", "content": c}], "ground_truth": words,
                                        "dataset": "ifeval"}) + "\n" for c in ("Say something.", "Tell me a story.")))
    cfg = load_config(RLVRConfig, None, [
        f"model.name_or_path={model_dir}", f"data.paths=[{rows}]", "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=4", "rollout.max_new_tokens=8", "optim.lr=2e-2", "kl.beta=0.01",
        "train.max_steps=3", "train.filter_constant_groups=false", f"eval.paths=[{rows}]", "run.progress=false",
        f"run.output_dir={tmp_path / 'run'}", "rollout.backend=vllm", "rollout.vllm.enforce_eager=true",
        "rollout.vllm.kv_cache_gib=0.25"])
    main(cfg)
    metrics = read_metrics(tmp_path / "run")
    trained = [r for r in metrics if "logprob_diff/mean_abs" in r]
    assert len(trained) == 3
    # lr 2e-2 moves the weights far: a generator left on the old weights would be off by >> 1e-3
    assert max(r["logprob_diff/mean_abs"] for r in trained) < 1e-3
    assert "eval/rows/accuracy" in metrics[0]


@pytest.mark.vllm
def test_eval_with_the_vllm_backend_from_a_model_directory(tokenizer, tmp_path):
    pytest.importorskip("vllm")
    from posttrain.evaluation.results import read_rows
    from posttrain.evaluation.runner import evaluate

    model_dir = tmp_path / "tiny"
    tiny_llama().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    kw = dict(tasks=["ifeval"], limit=3, max_new_tokens=6, progress=False, log=lambda m: None)
    evaluate(str(model_dir), out_dir=tmp_path / "native", backend="auto", **kw)
    evaluate(str(model_dir), out_dir=tmp_path / "vllm", backend="vllm",
             vllm=VLLMConfig(enforce_eager=True, kv_cache_gib=0.25), **kw)
    native, ours = (read_rows(tmp_path / b / "ifeval.jsonl") for b in ("native", "vllm"))
    assert len(ours) == 3
    assert [(r["output"], r["finish_reason"], r["num_tokens"]) for r in ours.values()] == \
        [(r["output"], r["finish_reason"], r["num_tokens"]) for r in native.values()]
