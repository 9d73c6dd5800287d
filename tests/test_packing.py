import pytest
import torch

from conftest import tiny_model
from posttrain.data.chat import IGNORE_INDEX
from posttrain.data.packing import pack, packed_forward, plan_micro_batches
from posttrain.train.varlen_attn import register


@pytest.mark.parametrize("impl", ["dense_mask", "varlen"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_packed_logits_equal_separate_runs(kind, impl):
    model = tiny_model(kind, vocab_size=500)
    if impl == "varlen":
        model.set_attn_implementation(register())
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, 500, (n,), generator=g).tolist() for n in (7, 3, 12, 1)]
    batch = pack([(d, d) for d in docs])
    with torch.no_grad():
        packed = packed_forward(model, batch).logits[0]
        start = 0
        for d in docs:
            alone = model(torch.tensor([d])).logits[0]  # one document: plain causal attention
            torch.testing.assert_close(packed[start:start + len(d)], alone, atol=1e-5, rtol=1e-5)
            start += len(d)


def test_targets_and_positions_restart_per_document():
    batch = pack([([5, 6, 7], [IGNORE_INDEX, 6, 7]), ([8, 9], [8, 9])])
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    # Each target is the next token of the same document; document ends predict nothing.
    assert batch.targets.tolist() == [[6, 7, IGNORE_INDEX, 9, IGNORE_INDEX]]
    assert batch.num_targets == 3 and batch.seq_lens == [3, 2]
    assert batch.segment_ids().tolist() == [0, 0, 0, 1, 1]


def test_plan_respects_budget_and_order():
    assert plan_micro_batches([3, 4, 2, 5, 1], 7) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="more than the micro-batch budget"):
        plan_micro_batches([3, 9], 8)
