"""Unit tests for the sampler: filtering on hand-made distributions, exactness of the draws."""

import math

import pytest
import torch

from posttrain.generation.sampling import (RowSettings, SamplingParams, filter_top_k_top_p, inverse_cdf_sample, mix64,
                                        row_uniform, sample_next, sequence_key)

PROBS = [0.5, 0.2, 0.15, 0.1, 0.05]


def _logits(probs=PROBS, rows=1):
    return torch.tensor(probs).log().repeat(rows, 1)


def _kept(z):
    return torch.isfinite(z[0]).nonzero().flatten().tolist()


@pytest.mark.parametrize("top_p, kept", [(0.5, [0]), (0.6, [0, 1]), (0.7, [0, 1]), (0.71, [0, 1, 2]),
                                         (0.85, [0, 1, 2]), (0.9, [0, 1, 2, 3]), (0.96, [0, 1, 2, 3, 4]), (1.0, [0, 1, 2, 3, 4])])
def test_top_p_keeps_smallest_prefix_reaching_mass(top_p, kept):
    # mass strictly before each token in sorted order: 0, .5, .7, .85, .95; keep where it is < top_p
    z = _logits()[:, [3, 0, 4, 2, 1]]  # shuffled, so the filter has to sort
    out = filter_top_k_top_p(z, None, torch.tensor([top_p]))
    order = [3, 0, 4, 2, 1]
    assert sorted(order[i] for i in _kept(out)) == kept


def test_top_k_and_ties_and_off():
    z = torch.tensor([[1.0, 3.0, 2.0, 3.0, 0.0], [1.0, 3.0, 2.0, 3.0, 0.0], [1.0, 3.0, 2.0, 3.0, 0.0]])
    out = filter_top_k_top_p(z, torch.tensor([1, 3, 0]), None)
    assert torch.isfinite(out[0]).tolist() == [False, True, False, True, False]  # tie at the threshold kept
    assert torch.isfinite(out[1]).tolist() == [False, True, True, True, False]
    assert torch.isfinite(out[2]).all()  # 0 = off
    # values that survive are unchanged
    assert torch.equal(out[1][torch.isfinite(out[1])], torch.tensor([3.0, 2.0, 3.0]))


def test_top_k_then_top_p_compose():
    z = _logits()
    out = filter_top_k_top_p(z, torch.tensor([3]), torch.tensor([0.9]))
    # after top-3 the renormalised mass is .5/.85, .2/.85, .15/.85 = .588, .235, .176: top_p .9 keeps 3
    assert _kept(out) == [0, 1, 2]
    out = filter_top_k_top_p(z, torch.tensor([3]), torch.tensor([0.8]))
    assert _kept(out) == [0, 1]  # mass before token 2 is .824 >= .8


def _unsigned_splitmix_finaliser(x: int) -> int:
    m = (1 << 64) - 1
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_mix64_matches_unsigned_reference():
    vals = [0, 1, 2, 12345, (1 << 63) - 1, -1, -(1 << 63), 0x1234_5678_9ABC_DEF0, 0xF234_5678_9ABC_DEF0 - (1 << 64)]
    got = mix64(torch.tensor(vals, dtype=torch.int64)).tolist()
    for v, g in zip(vals, got):
        assert g & ((1 << 64) - 1) == _unsigned_splitmix_finaliser(v & ((1 << 64) - 1))


def test_row_uniform_range_and_determinism():
    keys = torch.tensor([sequence_key(0, i, 0) for i in range(20000)])
    steps = torch.arange(20000) % 7
    u = row_uniform(keys, steps)
    assert u.dtype == torch.float64 and torch.equal(u, row_uniform(keys, steps))
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01  # 20k draws: sd of the mean is 0.002
    assert row_uniform(keys[:1], steps[:1] + 1).item() != u[0].item()  # the next step draws anew
    assert row_uniform(keys[5:6], steps[5:6]).item() == u[5].item()  # batch-independent


def test_inverse_cdf_sample_boundaries():
    z = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]] * 4)
    u = torch.tensor([1e-12, 0.499, 0.501, 1 - 1e-12], dtype=torch.float64)
    assert inverse_cdf_sample(z, u).tolist() == [0, 0, 2, 2]  # never a -inf token, never out of range


def _rows(n, temperature=1.0, top_k=None, top_p=None, seed=0):
    return RowSettings(temperature=torch.full((n,), temperature), keys=torch.tensor([sequence_key(seed, i, 0) for i in range(n)]),
                       steps=torch.zeros(n, dtype=torch.long), top_k=top_k, top_p=top_p,
                       top_k_max=0 if top_k is None else int(top_k.max()))


def test_sampling_frequencies_match_probabilities():
    n = 20000
    tokens, _ = sample_next(_logits(rows=n), _rows(n))
    freq = torch.bincount(tokens, minlength=5).float() / n
    for f, p in zip(freq.tolist(), PROBS):
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_sampling_with_top_p_renormalises_over_the_nucleus():
    n = 20000
    tokens, _ = sample_next(_logits(rows=n), _rows(n, top_p=torch.full((n,), 0.7)))
    freq = (torch.bincount(tokens, minlength=5).float() / n).tolist()
    assert freq[2:] == [0.0, 0.0, 0.0]
    assert abs(freq[0] - 0.5 / 0.7) < 4 * math.sqrt(0.2 / n)


def test_temperature_sharpens_and_logprobs_are_tempered_full_vocab():
    n = 20000
    z = _logits(rows=n)
    tokens, lp = sample_next(z, _rows(n, temperature=0.5, top_p=torch.full((n,), 0.9)))
    p = torch.tensor(PROBS) ** 2
    p = p / p.sum()  # softmax(log p / 0.5)
    freq = torch.bincount(tokens, minlength=5).float() / n
    assert abs(freq[0].item() - p[0].item() / p[:3].sum().item()) < 0.015
    # reported log-prob: log_softmax(z / T) over the FULL vocab, not renormalised after top-p
    assert torch.allclose(lp, p.log()[tokens], atol=1e-5)


def test_greedy_rows_take_argmax_and_report_t1_logprobs():
    z = torch.tensor([[0.0, 2.0, 1.0], [0.0, 2.0, 1.0]])
    rows = _rows(2)
    rows.temperature = torch.tensor([0.0, 1.0])
    tokens, lp = sample_next(z, rows)
    assert tokens[0].item() == 1
    assert lp[0].item() == pytest.approx(torch.log_softmax(z[0], -1)[1].item(), abs=1e-6)
    rows.all_greedy = True
    rows.temperature = torch.tensor([0.0, 0.0])
    assert sample_next(z, rows)[0].tolist() == [1, 1]


def test_sampling_params_validation():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="n must"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=("",))
    assert SamplingParams(stop="###").stop == ("###",)
    assert SamplingParams(temperature=0).greedy and SamplingParams(top_k=1).greedy


def test_host_and_device_hash_agree():
    # sequence keys are hashed on the host with Python ints, noise on the device with int64 tensors
    from posttrain.generation.sampling import _GOLDEN, _mix64_int
    for x in (0, 7, 2**40 + 3, -5, 2**62):
        assert _mix64_int(x * _GOLDEN + 1) == mix64(torch.tensor([x], dtype=torch.int64) * _GOLDEN + 1).item()
