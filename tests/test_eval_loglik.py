"""Log-likelihood scoring: the packed, prefix-shared path equals one plain forward per request."""

import pytest
import torch

from conftest import tiny_model
from posttrain.evaluation.loglik import (_groups, encode_pair, score_requests, score_requests_cached,
                                         score_requests_naive)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3).eval()


def _requests(tokenizer):
    contexts = ["Question: 2 + 2 = ?\nAnswer:", "The capital of France is", "x"]
    options = [[" A", " B", " C", " D"], [" Paris", " a city in Europe, by the river", " Rome"], [" y"]]
    return [encode_pair(tokenizer, c, o) for c, opts in zip(contexts, options) for o in opts]


def test_packed_shared_prefix_scores_equal_plain_forwards(model, tokenizer):
    reqs = _requests(tokenizer)
    want = score_requests_naive(model, reqs)
    for budget in (4096, 24, 1):  # all in one row; a few groups per row; one group per row
        got = score_requests(model, reqs, max_tokens=budget)
        assert [g.num_tokens for g in got] == [w.num_tokens for w in want]
        assert [g.greedy for g in got] == [w.greedy for w in want]
        torch.testing.assert_close(torch.tensor([g.logprob for g in got]), torch.tensor([w.logprob for w in want]),
                                   rtol=1e-5, atol=1e-4)
    # the model is handed back with its own attention and mode
    assert model.config._attn_implementation != "posttrain_varlen" and not model.training


def test_each_context_is_computed_once(tokenizer):
    reqs = _requests(tokenizer)
    rows = _groups(reqs, max_tokens=10_000)
    assert rows == [list(range(len(reqs)))]
    # a row never splits the options of one question
    for row in _groups(reqs, max_tokens=1):
        assert len({tuple(reqs[i][0]) for i in row}) == 1
    tokens = sum(len(reqs[i][0]) for i in (0, 4, 7)) + sum(len(c) for _, c in reqs)
    assert sum(len(reqs[r[0]][0]) + sum(len(reqs[i][1]) for i in r) for r in _groups(reqs, 1)) == tokens


def test_context_whitespace_moves_to_the_continuation(tokenizer):
    a = encode_pair(tokenizer, "Answer: ", "B")
    b = encode_pair(tokenizer, "Answer:", " B")
    assert a == b and tokenizer.decode(a[1]) == " B"
    with pytest.raises(ValueError, match="no tokens"):
        encode_pair(tokenizer, "Answer:", "")


def test_prefix_cached_scores_equal_plain_forwards(model, tokenizer):
    shots = "Q: 1 + 1?\nA: 2\n\nQ: 3 + 4?\nA: 7\n\n"  # a shared few-shot prefix, then different questions
    reqs = [encode_pair(tokenizer, shots + q, o) for q in ("Q: 2 + 2?\nA:", "Q: 5 + 1?\nA:", "Q: 9 - 3?\nA:")
            for o in (" 4", " 6", " twenty two", " 4 or 5 or 6")]
    reqs += _requests(tokenizer)  # and contexts that share nothing
    want = score_requests_naive(model, reqs)
    got = score_requests_cached(model, reqs[::-1])[::-1]  # any order in, results in request order
    assert [g.num_tokens for g in got] == [w.num_tokens for w in want]
    assert [g.greedy for g in got] == [w.greedy for w in want]
    torch.testing.assert_close(torch.tensor([g.logprob for g in got]), torch.tensor([w.logprob for w in want]),
                               rtol=1e-5, atol=1e-4)
    assert not model.training
