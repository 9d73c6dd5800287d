"""Loss reduction under gradient accumulation, checked against values worked out by hand.

The "model" is a table: logits at a position are the row of the input token, so with a zero table
every prediction is uniform over V=4 and each gradient row is (1/4 - onehot(target)) / normaliser.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from posttrain.data.chat import IGNORE_INDEX as X
from posttrain.data.packing import pack
from posttrain.losses.sft import sft_loss, token_nll_sum
from posttrain.recipes.sft import accumulate_gradients


class TableLM(torch.nn.Module):
    config = SimpleNamespace(_attn_implementation="table")

    def __init__(self, vocab=4):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))

    def forward(self, input_ids, logits_to_keep=None, **kwargs):
        logits = self.table[input_ids]
        return SimpleNamespace(logits=logits if logits_to_keep is None else logits[:, logits_to_keep])


DOC_A = ([0, 1, 2, 3], [X, 1, 2, 3])  # 3 trainable targets: 0->1, 1->2, 2->3
DOC_B = ([0, 1], [X, 1])  # 1 trainable target: 0->1


def grads(batches, normalizer):
    model = TableLM()
    nll = accumulate_gradients(model, batches, len(batches), 1.0 / normalizer)
    return nll, model.table.grad


def row(target, scale):
    return [scale * (0.25 - (1.0 if j == target else 0.0)) for j in range(4)]


def test_mean_is_over_all_tokens_of_the_step_not_per_micro_batch():
    nll, g = grads([pack([DOC_A]), pack([DOC_B])], normalizer=4)  # 4 trainable tokens in the step
    assert nll == pytest.approx(4 * math.log(4))
    # Row 0 gets two targets "1" (one per document): 2 * (1/4 - onehot(1)) / 4.
    assert g[0].tolist() == pytest.approx(row(1, 2 / 4))
    assert g[1].tolist() == pytest.approx(row(2, 1 / 4))
    assert g[2].tolist() == pytest.approx(row(3, 1 / 4))
    assert g[3].tolist() == pytest.approx([0.0] * 4)
    # A mean of per-micro-batch means would give row 0 a weight of (1/3 + 1) / 2 = 2/3, not 1/2.
    assert g[0, 1].item() != pytest.approx(-0.75 * 2 / 3)
    # The split into micro-batches does not change the result.
    _, g_one = grads([pack([DOC_A, DOC_B])], normalizer=4)
    torch.testing.assert_close(g, g_one)


def test_sum_divides_by_a_fixed_constant():
    nll, g = grads([pack([DOC_A]), pack([DOC_B])], normalizer=2)  # e.g. batch_size = 2 sequences
    assert g[0].tolist() == pytest.approx(row(1, 2 / 2))
    assert g[1].tolist() == pytest.approx(row(2, 1 / 2))
    # Twice the tokens -> twice the gradient (a mean would not change).
    _, g2 = grads([pack([DOC_A]), pack([DOC_B]), pack([DOC_A]), pack([DOC_B])], normalizer=2)
    torch.testing.assert_close(g2, 2 * g)


def test_token_nll_sum_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0], [5.0, 1.0]]])
    targets = torch.tensor([[1, X, 0]])
    # -log(3/4) for the first position, ignored second, -log(e^5 / (e^5 + e^1)) for the third.
    expected = -math.log(3 / 4) - (5 - math.log(math.exp(5) + math.exp(1)))
    assert token_nll_sum(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    assert sft_loss(logits, targets, 2.0).item() == pytest.approx(expected / 2, rel=1e-6)
    with pytest.raises(ValueError):
        sft_loss(logits, targets, 0.0)
