"""The `varlen_flash` path's layout handling, checked on CPU.

torch's varlen flash kernel runs only on CUDA, so a stand-in written from its documented contract
([T, H, D] tensors, cumulative lengths, causal via `window_size=(-1, 0)` or, in older releases,
`is_causal`, grouped-query heads via `enable_gqa`) replaces it here. The model's logits and
gradients through our flash path must equal those of the per-document SDPA path.
"""

import math

import pytest
import torch
from torch.nn.attention import varlen

from conftest import tiny_model
from posttrain.data.packing import pack, packed_forward
from posttrain.train import varlen_attn


def _reference(q, k, v, cu_q, cu_k, max_q, max_k, causal, gqa, scale):
    assert q.dim() == 3 and q.stride(-1) == 1 and cu_q.dtype == torch.int32
    assert max_q == int((cu_q[1:] - cu_q[:-1]).max()) and max_k == max_q
    if k.shape[1] != q.shape[1]:
        assert gqa, "fewer key heads than query heads needs enable_gqa"
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    outs = []
    bounds = cu_q.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        scores = torch.einsum("thd,shd->hts", q[s:e], k[s:e]) * (scale or 1 / math.sqrt(q.shape[-1]))
        if causal:
            n = e - s
            scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        outs.append(torch.einsum("hts,shd->thd", scores.softmax(-1), v[s:e]))
    return torch.cat(outs)


def new_api(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
            window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    new_api.calls += 1
    assert window_size in ((-1, -1), (-1, 0))
    return _reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, window_size == (-1, 0), enable_gqa, scale)


def old_api(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, return_aux=None, scale=None):
    old_api.calls += 1
    return _reference(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal, False, scale)


@pytest.fixture
def flash_on_cpu(monkeypatch):
    monkeypatch.setattr(varlen_attn, "_flash_on_cpu", True)
    yield
    varlen_attn.register("sdpa")  # the kernel choice is process-wide: leave it as other tests expect


@pytest.mark.parametrize("api", [new_api, old_api], ids=["window_size+gqa", "is_causal"])
def test_flash_path_matches_per_document_sdpa(api, flash_on_cpu, monkeypatch):
    api.calls = 0
    monkeypatch.setattr(varlen, "varlen_attn", api)
    model = tiny_model("llama", vocab_size=500)  # 4 query heads over 2 key/value heads
    assert model.config.num_attention_heads != model.config.num_key_value_heads
    g = torch.Generator().manual_seed(3)
    docs = [torch.randint(0, 500, (n,), generator=g).tolist() for n in (9, 2, 14, 5)]
    batch = pack([(d, d) for d in docs])

    def run(impl):
        varlen_attn.install(model, impl)
        model.zero_grad()
        logits = packed_forward(model, batch).logits
        logits.float().square().mean().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    ref_logits, ref_grads = run("varlen")
    assert api.calls == 0
    logits, grads = run("varlen_flash")
    assert api.calls == model.config.num_hidden_layers
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_flash_kernel_is_cuda_only_by_default(monkeypatch):
    """On CPU `varlen_flash` must take the SDPA path (torch's kernel has no CPU implementation)."""
    def boom(*a, **k):
        raise AssertionError("flash kernel called on CPU")

    monkeypatch.setattr(varlen, "varlen_attn", boom)
    model = varlen_attn.install(tiny_model("llama", vocab_size=500), "varlen_flash")
    try:
        batch = pack([([1, 2, 3], [1, 2, 3]), ([4, 5], [4, 5])])
        with torch.no_grad():
            assert torch.isfinite(packed_forward(model, batch).logits).all()
    finally:
        varlen_attn.register("sdpa")


def test_unknown_kernel_is_an_error():
    with pytest.raises(ValueError, match="valid: sdpa, flash"):
        varlen_attn.register("triton")


def test_hf_generation_path_masks_left_padding_under_varlen_attention():
    """Left-padded generation (the HF backend) through our attention name must get a padding mask:
    transformers builds none for an unregistered name, and padded rows used to attend to their pads."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_model
    from posttrain.generation import Engine
    from posttrain.generation.sampling import SamplingParams
    from posttrain.train.varlen_attn import install

    model = install(tiny_model(), "varlen")
    outs = Engine(model, None, backend="hf").generate(
        [[1, 100, 200, 300, 400], [1, 500]], SamplingParams(max_new_tokens=5, temperature=1.0, n=2, seed=3))
    for o in outs:  # each sequence alone, unpadded, through the same model
        ids = torch.tensor([o.prompt_token_ids + o.token_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        n = len(o.prompt_token_ids)
        expected = torch.tensor([lp[n - 1 + i, t].item() for i, t in enumerate(o.token_ids)])
        torch.testing.assert_close(torch.tensor(o.logprobs), expected, atol=1e-4, rtol=0)
