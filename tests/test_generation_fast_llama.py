"""The lean Llama-family forward must reproduce HF's logits (Llama GQA, Qwen2 biases, Qwen3 q/k norms)."""

import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from posttrain.generation.fast_llama import FastLlama, fast_path_unsupported_reason, onednn_gemm_available

COMMON = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matmuls gain nothing from a second thread and stall when the CPU is shared
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def _model(kind: str):
    torch.manual_seed(0)
    if kind == "llama":
        m = LlamaForCausalLM(LlamaConfig(**COMMON, rope_theta=500.0))
    elif kind == "llama-bias-mha":  # attention_bias on q/k/v/o, no GQA, untied head
        m = LlamaForCausalLM(LlamaConfig(**{**COMMON, "num_key_value_heads": 4}, attention_bias=True))
    elif kind == "qwen2":
        m = Qwen2ForCausalLM(Qwen2Config(**COMMON, tie_word_embeddings=True))
    elif kind == "qwen3":
        m = Qwen3ForCausalLM(Qwen3Config(**COMMON, head_dim=16))
    elif kind == "mistral":
        m = MistralForCausalLM(MistralConfig(**COMMON, sliding_window=None))
    else:
        raise AssertionError(kind)
    with torch.no_grad():  # HF zero-inits biases; random ones make the bias path count
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return m.eval()


# how the fast path holds the weights: oneDNN-packed copies (the CPU fp32 default), fused copies
# (the CUDA default), or the model's own tensors
WEIGHTS = ["packed", "fused", "live"]


def _fast(model, weights: str, **kw) -> FastLlama:
    if weights == "packed" and not onednn_gemm_available():
        pytest.skip("this torch build has no oneDNN")
    fast = FastLlama(model, fuse_weights=weights == "fused", packed_gemm=weights == "packed", **kw)
    assert fast.lm_head.is_mkldnn == (weights == "packed")
    assert fast.layers[0].down.is_mkldnn == (weights == "packed")
    return fast


def _hf_next_logits(model, seq):
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0]


@pytest.mark.parametrize("kind", ["llama", "llama-bias-mha", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("weights", WEIGHTS)
def test_prefill_and_decode_logits_match_hf(kind, weights):
    model = _model(kind)
    assert fast_path_unsupported_reason(model) is None
    fast = _fast(model, weights)
    fast.allocate(num_slots=4, max_len=40)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    # prompt 1 goes to two slots (dedupe), written out of order
    logits = fast.prefill(prompts, slots=[0, 1, 2, 3], sources=[2, 0, 1, 1])
    seqs = [prompts[2], prompts[0], prompts[1], prompts[1]]
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(logits[row], _hf_next_logits(model, seq)[-1], atol=1e-4, rtol=1e-4)
    torch.manual_seed(1)
    for _ in range(5):
        new = torch.randint(0, 101, (4,))
        seqs = [s + [int(t)] for s, t in zip(seqs, new)]
        logits = fast.decode(new, 4)
        for row, seq in enumerate(seqs):
            torch.testing.assert_close(logits[row], _hf_next_logits(model, seq)[-1], atol=1e-4, rtol=1e-4)
    # drop rows 0 and 2: the survivors keep decoding correctly from their moved cache rows
    fast.select([3, 1])
    seqs = [seqs[3], seqs[1]]
    new = torch.tensor([3, 4])
    logits = fast.decode(new, 2)
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(logits[row], _hf_next_logits(model, seq + [int(new[row])])[-1],
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_shared_prefix_prefill_matches_hf(kind):
    """Few-shot prompts share their exemplars: the prefix runs once, the suffixes attend to it."""
    model = _model(kind)
    fast = FastLlama(model)
    fast.min_shared_prefix = 4
    fast.allocate(num_slots=4, max_len=48)
    shots = [7, 3, 9, 11, 2, 5, 8, 13, 21, 34, 1, 4]
    prompts = [shots + [50, 51, 52], shots + [60], shots + [70, 71, 72, 73, 74]]
    logits = fast.prefill(prompts, slots=[0, 1, 2, 3], sources=[0, 1, 2, 1])
    seqs = [prompts[0], prompts[1], prompts[2], prompts[1]]
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(logits[row], _hf_next_logits(model, seq)[-1], atol=1e-4, rtol=1e-4)
    for step in range(3):  # decoding reads the prefix KV written once for every row
        new = torch.tensor([3 + step, 4, 5, 6 + step])
        seqs = [s + [int(t)] for s, t in zip(seqs, new)]
        logits = fast.decode(new, 4)
        for row, seq in enumerate(seqs):
            torch.testing.assert_close(logits[row], _hf_next_logits(model, seq)[-1], atol=1e-4, rtol=1e-4)
    # a prompt that is exactly the shared part keeps its last token as its own suffix
    fast.allocate(num_slots=2, max_len=48)
    logits = fast.prefill([shots, shots + [60, 61]], slots=[0, 1], sources=[0, 1])
    torch.testing.assert_close(logits[0], _hf_next_logits(model, shots)[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], _hf_next_logits(model, shots + [60, 61])[-1], atol=1e-4, rtol=1e-4)
    fast.min_shared_prefix = 0  # disabled: every prompt runs whole, same logits
    again = fast.prefill([shots, shots + [60, 61]], slots=[0, 1], sources=[0, 1])
    torch.testing.assert_close(again, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_refresh_weights_follows_in_place_updates(weights):
    model = _model("llama")
    fast = _fast(model, weights)
    fast.allocate(1, 16)
    before = fast.prefill([[1, 2, 3]], [0], [0])
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight.mul_(3.0)  # an optimizer step, say
        model.model.layers[1].mlp.up_proj.weight.add_(0.1)
    assert fast.weights_changed()
    fast.refresh_weights()
    after = fast.prefill([[1, 2, 3]], [0], [0])
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after[0], _hf_next_logits(model, [1, 2, 3])[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("weights", ["packed", "fused"])
def test_weight_copies_follow_the_trainers_fused_adamw(weights):
    """torch's fused AdamW does not bump parameter versions; build_optimizer's hook must, or the
    engine's weight copies would go stale after the first RL update."""
    from posttrain.train.optim import build_optimizer

    model = _model("llama")
    fast = _fast(model, weights)
    fast.allocate(1, 16)
    before = fast.prefill([[1, 2, 3]], [0], [0])
    opt = build_optimizer(model, lr=0.05, weight_decay=0.0)
    model(torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss.backward()
    opt.step()
    assert fast.weights_changed()
    fast.refresh_weights()
    after = fast.prefill([[1, 2, 3]], [0], [0])
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after[0], _hf_next_logits(model, [1, 2, 3])[-1], atol=1e-4, rtol=1e-4)


def test_unsupported_architectures_are_reported():
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    assert "model_type" in fast_path_unsupported_reason(gpt2)
    sliding = MistralForCausalLM(MistralConfig(**COMMON, sliding_window=16))
    assert "sliding" in fast_path_unsupported_reason(sliding)
    with pytest.raises(ValueError, match="cannot run"):
        FastLlama(gpt2)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_cascade_prefix_decode_matches_hf(kind):
    """Cascade mode: the prefix KV is held once, rows hold only what follows it, and decode merges
    the prefix and row softmaxes; logits must still be HF's, through refills and compaction."""
    model = _model(kind)
    fast = FastLlama(model, cascade=True)
    shots = [7, 3, 9, 11, 2, 5, 8, 13, 21, 34, 1, 4]
    fast.allocate(num_slots=3, max_len=len(shots) + 12, prefix=shots)
    assert fast.base == len(shots) and fast.max_len < len(shots) + 12 + 64  # rows skip the prefix
    prompts = [shots + [50, 51, 52], shots + [60], shots + [70, 71, 72, 73]]
    logits = fast.prefill(prompts, slots=[0, 1, 2], sources=[0, 1, 2])
    seqs = list(prompts)
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(logits[row], _hf_next_logits(model, seq)[-1], atol=1e-4, rtol=1e-4)
    torch.manual_seed(2)
    for _ in range(4):
        new = torch.randint(0, 101, (3,))
        seqs = [s + [int(t)] for s, t in zip(seqs, new)]
        logits = fast.decode(new, 3)
        for row, seq in enumerate(seqs):
            torch.testing.assert_close(logits[row], _hf_next_logits(model, seq)[-1], atol=1e-4, rtol=1e-4)
    fast.select([2, 1])  # row 0 finished; row 2 moves down
    seqs = [seqs[2], seqs[1]]
    refill = shots + [80, 81]
    logits = fast.prefill([refill], slots=[2], sources=[0])  # a waiting prompt takes the free row
    torch.testing.assert_close(logits[0], _hf_next_logits(model, refill)[-1], atol=1e-4, rtol=1e-4)
    seqs.append(refill)
    new = torch.tensor([5, 6, 7])
    logits = fast.decode(new, 3)
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(logits[row], _hf_next_logits(model, seq + [int(new[row])])[-1],
                                   atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="does not extend the shared prefix"):
        fast.prefill([[9] + shots], slots=[0], sources=[0])
    # a plain allocate drops the prefix: rows hold whole sequences again
    fast.allocate(num_slots=1, max_len=16)
    assert fast.base == 0
    torch.testing.assert_close(fast.prefill([[1, 2, 3]], [0], [0])[0], _hf_next_logits(model, [1, 2, 3])[-1],
                               atol=1e-4, rtol=1e-4)


def test_cascade_attention_equals_one_softmax():
    from posttrain.generation.fast_llama import cascade_attention
    torch.manual_seed(0)
    B, K, G, D, P, L = 3, 2, 2, 8, 5, 4
    q = torch.randn(B, K, G, D) * 3  # large logits: the merge must stay stable
    pk, pv = torch.randn(K, P, D), torch.randn(K, P, D)
    k, v = torch.randn(B, K, L, D), torch.randn(B, K, L, D)
    visible = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    mask = torch.zeros(B, L).masked_fill(~visible, float("-inf"))[:, None, None, :]
    got = cascade_attention(q, pk, pv, k, v, mask, 0.5)
    keys = torch.cat([pk.expand(B, -1, -1, -1), k], dim=2)
    vals = torch.cat([pv.expand(B, -1, -1, -1), v], dim=2)
    full_mask = torch.cat([torch.zeros(B, 1, 1, P), mask], dim=-1)
    want = torch.softmax(q @ keys.transpose(-1, -2) * 0.5 + full_mask, -1) @ vals
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
