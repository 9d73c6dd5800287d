"""Engine behaviour: batching invariance, HF parity, log-probs, stops, n samples, seeds."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from posttrain.generation import Engine, SamplingParams, generate
from posttrain.generation.engine import _fill_from_tail
from posttrain.losses.logprobs import token_logprobs

EOS = 3
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16], [20], [30, 31, 32, 33], [40, 41]]



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matmuls gain nothing from a second thread and stall when the CPU is shared
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=EOS, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper logits: fewer near-ties, and EOS comes up within a few tokens
        model.lm_head.weight.mul_(8.0)
    return model


def _ids(outs):
    return [o.token_ids for o in outs]


@pytest.mark.parametrize("backend, overlap", [("fast", False), ("fast", True), ("hf", False), ("hf", True)])
def test_greedy_alone_equals_in_mixed_batch(tiny, backend, overlap):
    params = SamplingParams(temperature=0, max_new_tokens=10)
    alone = [Engine(tiny, backend=backend).generate([p], params)[0] for p in PROMPTS]
    # max_batch_size 2 < 5 prompts: rows finish and are refilled (fast) or run in waves (hf);
    # overlap keeps a step in flight as on CUDA
    batched = Engine(tiny, backend=backend, max_batch_size=2, overlap=overlap).generate(PROMPTS, params)
    assert _ids(batched) == _ids(alone)
    assert [o.finish_reason for o in batched] == [o.finish_reason for o in alone]
    assert {o.finish_reason for o in batched} == {"eos", "length"}  # both kinds of ending are exercised


def test_greedy_equals_hf_generate(tiny):
    outs = generate(tiny, None, PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
    for prompt, out in zip(PROMPTS, outs):
        ref = tiny.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0)
        ref = ref[0, len(prompt):].tolist()
        assert out.token_ids == ref  # HF stops at EOS too and keeps it
        assert out.finish_reason == ("eos" if ref[-1] == EOS else "length")


def test_hf_backend_on_a_non_llama_model():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                      eos_token_id=49)).eval()
    engine = Engine(gpt2)
    assert engine.backend_name == "hf"
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True))
    for prompt, out in zip(prompts, outs):
        ref = gpt2.generate(torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                            pad_token_id=0, eos_token_id=None)
        assert out.token_ids == ref[0, len(prompt):].tolist()


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_logprobs_equal_trainer_rescoring(tiny, temperature):
    params = SamplingParams(temperature=temperature, max_new_tokens=8, seed=3, top_p=0.9, n=2)
    for out in Engine(tiny, max_batch_size=3, overlap=True).generate(PROMPTS, params):
        seq = torch.tensor([out.prompt_token_ids + out.token_ids])
        with torch.no_grad():
            logits = tiny(seq).logits
        labels = seq.clone()
        labels[:, : len(out.prompt_token_ids)] = -100
        ref = token_logprobs(logits, labels, shift=True, temperature=temperature or 1.0)
        ref = ref[0, len(out.prompt_token_ids) - 1:]
        assert len(out.logprobs) == len(out.token_ids)
        torch.testing.assert_close(torch.tensor(out.logprobs), ref, atol=1e-4, rtol=1e-4)


def test_n_samples_seeds_and_batch_independence(tiny):
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=11, ignore_eos=True)
    a = Engine(tiny, max_batch_size=4).generate(PROMPTS, params)
    assert [(o.prompt_index, o.sample_index) for o in a] == [(i, j) for i in range(5) for j in range(3)]
    assert len({tuple(o.token_ids) for o in a[:3]}) > 1  # samples of one prompt differ
    # same seed: same output, whatever the batch size or the other prompts
    b = Engine(tiny, max_batch_size=16).generate(PROMPTS, params)
    assert _ids(a) == _ids(b)
    c = Engine(tiny).generate(PROMPTS[:2] + [[60, 61, 62]], params)
    assert _ids(c[:6]) == _ids(a[:6])
    d = Engine(tiny, backend="hf", max_batch_size=5).generate(PROMPTS, params)
    assert _ids(d) == _ids(a)
    d = Engine(tiny, max_batch_size=4, overlap=True).generate(PROMPTS, params)
    assert _ids(d) == _ids(a)
    # another seed gives other samples; seed=None is drawn from torch's global RNG
    e = Engine(tiny).generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=12, ignore_eos=True))
    assert _ids(e) != _ids(a)
    unseeded = SamplingParams(temperature=1.0, max_new_tokens=8, ignore_eos=True)
    torch.manual_seed(5)
    f = Engine(tiny).generate(PROMPTS, unseeded)
    torch.manual_seed(5)
    assert _ids(Engine(tiny).generate(PROMPTS, unseeded)) == _ids(f)


def test_top_k_1_is_greedy_and_per_prompt_params(tiny):
    greedy = Engine(tiny).generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=8))
    topk1 = Engine(tiny).generate(PROMPTS, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=8, seed=0))
    assert _ids(topk1) == _ids(greedy)
    # one params object per prompt: greedy rows inside a sampled batch stay greedy
    mixed = [SamplingParams(temperature=0, max_new_tokens=8) if i % 2 == 0 else
             SamplingParams(temperature=1.0, top_k=5, max_new_tokens=3, seed=1) for i in range(len(PROMPTS))]
    outs = Engine(tiny, max_batch_size=3).generate(PROMPTS, mixed)
    for i, o in enumerate(outs):
        if i % 2 == 0:
            assert o.token_ids == greedy[i].token_ids
        else:
            assert len(o.token_ids) <= 3


def test_length_is_capped_by_the_context_window(tiny):
    prompt = list(range(5, 60))  # 55 tokens, max_position_embeddings 64
    out = Engine(tiny).generate([prompt], SamplingParams(temperature=0, max_new_tokens=50, ignore_eos=True))[0]
    assert len(out.token_ids) == 9 and out.finish_reason == "length"
    with pytest.raises(ValueError, match="limit is 64"):
        Engine(tiny).generate([list(range(64))], SamplingParams(max_new_tokens=1))


@pytest.mark.parametrize("fuse", [True, False])
def test_weight_updates_are_seen_by_an_existing_engine(tiny, fuse):
    import copy
    model = copy.deepcopy(tiny)
    engine = Engine(model, fuse_weights=fuse)
    params = SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
    before = engine.generate(PROMPTS, params)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = engine.generate(PROMPTS, params)
    assert _ids(after) != _ids(before)
    assert _ids(after) == _ids(Engine(model).generate(PROMPTS, params))


# -- stop strings, EOS, text: a scripted model that emits fixed tokens, with the real tokenizer ----

class ScriptedLM(nn.Module):
    """Emits `script[k]` as the k-th generated token whatever the prompt; runs on the HF backend."""

    def __init__(self, script: list[int], prompt_len: int, vocab: int, eos: int):
        super().__init__()
        self.script, self.prompt_len, self.vocab = script, prompt_len, vocab
        self.dummy = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(model_type="scripted", max_position_embeddings=4096, eos_token_id=eos)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=0):
        k = int(position_ids[0, -1]) + 1 - self.prompt_len
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -10.0)
        logits[:, :, self.script[min(k, len(self.script) - 1)]] = 10.0
        return SimpleNamespace(logits=logits, past_key_values=None)


@pytest.fixture(scope="module")
def tok():
    from posttrain.models import load_tokenizer
    return load_tokenizer("smollm2-135m")


def _scripted(tok, text, prompt, eos_after=False):
    script = tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos_after else [])
    return ScriptedLM(script, len(tok(prompt, add_special_tokens=False)["input_ids"]), len(tok), tok.eos_token_id), script


def test_stop_string_cuts_text_and_trims_tokens(tok):
    prompt = "Q: 6*7?\nA:"
    model, script = _scripted(tok, " The answer is 42.\n\nQuestion: what next", prompt)
    out = Engine(model, tok).generate([prompt], SamplingParams(temperature=0, max_new_tokens=40,
                                                               stop=("Question:", "\n\n")))[0]
    assert out.finish_reason == "stop"
    assert out.text == " The answer is 42."  # cut before the earliest stop string, "\n\n"
    # tokens run up to and including the one that completed the stop string
    n = len(out.token_ids)
    assert out.token_ids == script[:n]
    assert "\n\n" in tok.decode(script[:n]) and "\n\n" not in tok.decode(script[: n - 1])
    assert len(out.logprobs) == n


@pytest.mark.parametrize("stop, text", [("42", " The answer is "), ("is 4", " The answer "), ("answer is", " The "),
                                        (".\n", " The answer is 42"), ("is ", " The answer "), ("é", " The answer is 42.\n\nQuestion: what next")])
def test_stop_strings_of_every_shape(tok, stop, text):
    # token boundaries inside, at the edge of and across the stop string; trailing space; a stop
    # string that never occurs
    prompt = "Q: 6*7?\nA:"
    model, script = _scripted(tok, " The answer is 42.\n\nQuestion: what next", prompt, eos_after=True)
    out = Engine(model, tok).generate([prompt], SamplingParams(temperature=0, max_new_tokens=40, stop=(stop,)))[0]
    assert out.text == text
    assert out.finish_reason == ("eos" if stop == "é" else "stop")
    if out.finish_reason == "stop":
        assert stop in tok.decode(out.token_ids) and stop not in tok.decode(out.token_ids[:-1])


def test_eos_and_length_finish_reasons_and_text(tok):
    prompt = "Say hi."
    model, script = _scripted(tok, "Hi there!", prompt, eos_after=True)
    out = Engine(model, tok).generate([prompt], SamplingParams(temperature=0, max_new_tokens=40))[0]
    assert out.finish_reason == "eos" and out.token_ids == script and out.text == "Hi there!"
    out = Engine(model, tok).generate([prompt], SamplingParams(temperature=0, max_new_tokens=2))[0]
    assert out.finish_reason == "length" and out.token_ids == script[:2]
    # a custom stop token replaces the EOS default
    out = Engine(model, tok).generate([prompt], SamplingParams(temperature=0, max_new_tokens=40,
                                                               stop_token_ids=(script[1],)))[0]
    assert out.finish_reason == "eos" and out.token_ids == script[:2] and out.text == tok.decode(script[:1])
    # a stop string that never appears leaves EOS in charge
    out = Engine(model, tok).generate([prompt], SamplingParams(temperature=0, max_new_tokens=40, stop=("zzz",)))[0]
    assert out.finish_reason == "eos" and out.text == "Hi there!"


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(ValueError, match="no tokenizer"):
        Engine(tiny).generate(["a string"], SamplingParams())
    with pytest.raises(ValueError, match="stop strings"):
        Engine(tiny).generate([[1, 2]], SamplingParams(stop=("x",)))
    with pytest.raises(ValueError, match="empty"):
        Engine(tiny).generate([[]], SamplingParams())
    with pytest.raises(ValueError, match="SamplingParams for"):
        Engine(tiny).generate([[1], [2]], [SamplingParams()])
    with pytest.raises(ValueError, match="backend"):
        Engine(tiny, backend="vllm")


def test_embedded_model_batched_greedy_matches_single(tok):
    from posttrain.models import load_model
    model = load_model("smollm2-135m")
    qs = ["What is 2+2?", "Name a colour.", "Write one word about the sea, then explain it in a long paragraph."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
               for q in qs]
    params = SamplingParams(temperature=0, max_new_tokens=12)
    engine = Engine(model, tok)
    batched = engine.generate(prompts, params)
    assert all(o.text.strip() for o in batched)
    # the shortest and the longest prompt alone; the longest also against HF's greedy decoding
    assert engine.generate([prompts[0]], params)[0].token_ids == batched[0].token_ids
    assert engine.generate([prompts[2]], params)[0].token_ids == batched[2].token_ids
    enc = tok(prompts[2], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ref = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert batched[2].token_ids == ref[0, enc.input_ids.shape[1]:].tolist()


def test_fill_from_tail_moves_only_as_many_rows_as_finished():
    # rows 1 and 3 of 6 finished: rows 5 and 4 move into the holes, the rest stay put
    assert _fill_from_tail([0, 2, 4, 5], 6) == [0, 5, 2, 4]
    assert _fill_from_tail([0, 1, 2], 5) == [0, 1, 2]  # the tail finished: nothing moves
    assert _fill_from_tail([3, 4], 5) == [4, 3]
    assert _fill_from_tail([], 3) == []


def test_cascade_shared_prefix_gives_the_same_samples(tiny):
    """Prompts sharing >= 32 leading tokens (few-shot exemplars) decode against one copy of the
    prefix KV; tokens must equal the plain path's and HF generate's, log-probs the plain path's."""
    shots = [(7 * i) % 90 + 4 for i in range(36)]
    prompts = [shots + [50, 51], shots + [60], shots + [70, 71, 72], shots + [80, 81, 82, 83]]
    greedy = SamplingParams(temperature=0, max_new_tokens=10, logprobs=True)
    eng = Engine(tiny, max_batch_size=2)  # refills mid-wave take the suffix-only prefill path
    assert eng.backend.cascade
    cascaded = eng.generate(prompts, greedy)
    assert eng.backend.base == len(shots)
    plain = Engine(tiny, max_batch_size=2, cascade=False).generate(prompts, greedy)
    assert _ids(cascaded) == _ids(plain)
    for a, b in zip(cascaded, plain):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=1e-4)
    for prompt, out in zip(prompts, cascaded):
        ref = tiny.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0)
        assert out.token_ids == ref[0, len(prompt):].tolist()
    # n samples of one long prompt share all but its last token
    sampled = SamplingParams(temperature=1.0, max_new_tokens=8, n=4, seed=3)
    eng.generate([prompts[3]], sampled)
    assert eng.backend.base == len(prompts[3]) - 1
    assert _ids(eng.generate([prompts[3]], sampled)) == _ids(
        Engine(tiny, cascade=False).generate([prompts[3]], sampled))
    # short prompts: no cascade
    eng.generate(PROMPTS, greedy)
    assert eng.backend.base == 0
