"""Token log-probs (chunked, custom backward), sequence/segment sums and entropy."""

import math

import pytest
import torch

from posttrain.losses.logprobs import entropy_from_logits, segment_sum, sequence_logprobs, token_logprobs


def test_token_logprobs_hand_values():
    logits = torch.tensor([[[0.0, math.log(2.0), math.log(3.0)],  # softmax = [1, 2, 3] / 6
                            [0.0, 0.0, 0.0],                      # uniform
                            [5.0, 1.0, 2.0]]])                    # last position predicts nothing
    out = token_logprobs(logits, torch.tensor([[0, 2, 1]]), shift=True)
    assert out.shape == (1, 2)
    assert out[0].tolist() == pytest.approx([math.log(0.5), math.log(1 / 3)])
    out = token_logprobs(logits, torch.tensor([[0, -100, 1]]), shift=True)  # an ignored label scores 0
    assert out[0].tolist() == pytest.approx([0.0, math.log(1 / 3)])
    # temperature 2 turns [0, ln 4] into [0, ln 2]: probabilities 1/3, 2/3
    out = token_logprobs(torch.tensor([[[0.0, math.log(4.0)]]]), torch.tensor([[1]]), shift=False, temperature=2.0)
    assert out.item() == pytest.approx(math.log(2 / 3))


def _reference(logits, labels, temperature=1.0):
    logp = torch.log_softmax(logits[:, :-1].double() / temperature, dim=-1)
    tgt = labels[:, 1:]
    picked = logp.gather(-1, tgt.clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(tgt != -100, picked, torch.zeros_like(picked))


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_matches_log_softmax_values_and_gradients(chunk_size):
    gen = torch.Generator().manual_seed(0)
    logits0 = 3 * torch.randn(2, 5, 11, generator=gen)
    labels = torch.randint(0, 11, (2, 5), generator=gen)
    labels[0, 3] = -100
    weights = torch.randn(2, 4, generator=gen)
    a = logits0.clone().requires_grad_()
    out = token_logprobs(a, labels, shift=True, temperature=0.7, chunk_size=chunk_size)
    (out * weights).sum().backward()
    b = logits0.clone().requires_grad_()
    ref = _reference(b, labels, temperature=0.7)
    (ref * weights).sum().backward()
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, atol=1e-5)
    assert torch.allclose(a.grad, b.grad, atol=1e-5)
    assert a.grad[:, -1].abs().sum() == 0  # the last position predicts nothing
    assert torch.equal(a.detach(), logits0)  # backward works on copies, even of float32 logits
    # shift=False with pre-shifted labels is the same computation
    unshifted = token_logprobs(logits0[:, :-1], labels[:, 1:], shift=False, temperature=0.7, chunk_size=chunk_size)
    assert torch.equal(unshifted, out.detach())


def test_bfloat16_logits_keep_their_dtype_for_grad_and_save_little():
    gen = torch.Generator().manual_seed(1)
    logits = (2 * torch.randn(2, 16, 64, generator=gen)).bfloat16().requires_grad_()
    labels = torch.randint(0, 64, (2, 16), generator=gen)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel() * x.element_size()) or x,
                                                  lambda x: x):
        out = token_logprobs(logits, labels, shift=True, chunk_size=8)
    out.sum().backward()
    assert out.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    ref = _reference(logits.detach().float(), labels)
    assert torch.allclose(out.double(), ref, atol=1e-5)  # float32 math on the bf16 values
    # backward keeps the logits themselves (no copy) plus 12 bytes per token, never a float32 [N, V]
    assert sum(saved) <= logits.numel() * 2 + 2 * 16 * 12


def test_sequence_logprobs_and_segment_sum():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, 9.0]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    assert sequence_logprobs(lp, mask).tolist() == [-5.0, -0.75]
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], requires_grad=True)
    out = segment_sum(values, torch.tensor([0, 0, 1, 1, 2]), num_segments=4)
    assert out.tolist() == [3.0, 7.0, 5.0, 0.0]
    (out * torch.tensor([1.0, 10.0, 100.0, 1000.0])).sum().backward()
    assert values.grad.tolist() == [1.0, 1.0, 10.0, 10.0, 100.0]


def test_packed_row_gives_the_same_sums_as_a_padded_batch():
    gen = torch.Generator().manual_seed(2)
    vocab = 13
    docs = [torch.randint(0, vocab, (n,), generator=gen) for n in (5, 3)]
    prompt = [2, 1]  # first tokens of each doc are prompt: masked in the labels
    logits_docs = [torch.randn(len(d), vocab, generator=gen) for d in docs]
    # padded batch
    padded_logits = torch.zeros(2, 5, vocab)
    padded_labels = torch.full((2, 5), -100)
    for i, (d, z) in enumerate(zip(docs, logits_docs)):
        padded_logits[i, :len(d)] = z
        padded_labels[i, prompt[i]:len(d)] = d[prompt[i]:]
    per_tok = token_logprobs(padded_logits, padded_labels, shift=True)
    padded_sums = sequence_logprobs(per_tok, padded_labels[:, 1:] != -100)
    # packed row [1, 8, V] with per-token segment ids
    packed_logits = torch.cat(logits_docs)[None]
    packed_labels = torch.cat([torch.where(torch.arange(len(d)) >= p, d, -100) for d, p in zip(docs, prompt)])[None]
    seg = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])
    packed = token_logprobs(packed_logits, packed_labels, shift=True)[0]  # [N − 1], entry j scores label j + 1
    packed_sums = segment_sum(packed, seg[1:], num_segments=2)
    assert torch.allclose(packed_sums, padded_sums, atol=1e-6)
    # the data layer's form: targets shifted per document, then shift=False and per-position segment ids
    targets = torch.cat([torch.cat([lab[1:], torch.tensor([-100])])
                         for lab in packed_labels[0].split([len(d) for d in docs])])[None]
    packed = token_logprobs(packed_logits, targets, shift=False)[0]
    assert torch.allclose(segment_sum(packed, seg, num_segments=2), padded_sums, atol=1e-6)


def test_entropy_hand_values_and_chunking():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e9, -1e9]])
    h = entropy_from_logits(logits)
    assert h.tolist() == pytest.approx([math.log(4.0), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))], abs=1e-6)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 7, 19, generator=gen)
    p = torch.softmax(x.double(), -1)
    ref = -(p * torch.log(p)).sum(-1)
    assert torch.allclose(entropy_from_logits(x, chunk_size=4).double(), ref, atol=1e-5)
    assert entropy_from_logits(x, chunk_size=4).shape == (3, 7)


def test_errors():
    with pytest.raises(ValueError, match="labels"):
        token_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), shift=True)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), shift=True, temperature=0.0)
    with pytest.raises(ValueError, match="segment_ids"):
        segment_sum(torch.zeros(3), torch.zeros(2, dtype=torch.long), 2)


def test_custom_backward_passes_gradcheck():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    labels[0, 2] = -100
    assert torch.autograd.gradcheck(
        lambda z: token_logprobs(z, labels, shift=True, temperature=0.7, chunk_size=3), (logits,))
