"""Packing whole examples: rows never split an example, and the packed loss equals each example's own loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cptlab.sft.config import SFTDataConfig
from cptlab.sft.data import load_sft_data
from cptlab.sft.packing import SFTEvalRows, SFTRows, SFTSampler, pack_rows


@pytest.fixture(scope="module")
def examples(sft_files, tiny_tokenizer):
    return load_sft_data(sft_files["train"], tiny_tokenizer, SFTDataConfig(train="x"), seq_len=128).examples


def test_rows_hold_whole_examples(examples):
    lengths = np.array([e.positions for e in examples])
    order = np.random.default_rng(0).permutation(len(examples))
    rows = pack_rows(lengths, order, 128)
    assert sorted(i for r in rows for i in r) == list(range(len(examples)))  # each example once, none split
    assert all(lengths[r].sum() <= 128 for r in rows)
    assert any(len(r) > 1 for r in rows)  # packing happened
    # first-come: the next example did not fit in the previous row
    flat = [i for r in rows for i in r]
    assert flat == order.tolist()
    for a, b in zip(rows, rows[1:]):
        assert lengths[a].sum() + lengths[b[0]] > 128
    assert [len(r) for r in pack_rows(lengths, order, 128, packing=False)] == [1] * len(examples)


def test_row_layout(examples, tiny_tokenizer):
    data = SFTRows(examples, 128, pad_id=0)
    rows = pack_rows(data.lengths, np.arange(len(examples)), 128)
    ids, pos, labels = data.build(rows, 0)
    at = 0
    for i in rows[0]:
        e = examples[i]
        n = e.positions
        assert ids[at : at + n].tolist() == e.ids[:-1].tolist()
        assert pos[at : at + n].tolist() == list(range(n))  # positions restart for every example
        want = [int(t) if m else -100 for t, m in zip(e.ids[1:], e.target[1:])]
        assert labels[at : at + n].tolist() == want
        at += n
    assert (labels[at:] == -100).all() and (ids[at:] == 0).all()
    assert data.row_targets(rows, 0) == int((labels != -100).sum())


def test_packed_loss_equals_each_example_alone(examples, tiny_model_dir):
    """Document masking + label masking: a packed row's summed NLL is the sum over its examples run one by one
    through the plain HF model, with F.cross_entropy on the response tokens only."""
    from cptlab.model import load_model
    from cptlab.train.loss import CausalLMLoss

    model = load_model(tiny_model_dir, dtype="fp32").eval()
    data = SFTRows(examples, 128, pad_id=0)
    rows = pack_rows(data.lengths, np.arange(len(examples)), 128)
    k = next(k for k, r in enumerate(rows) if len(r) >= 2)
    ids, pos, labels = (torch.from_numpy(a)[None] for a in data.build(rows, k))
    with torch.no_grad():
        packed, _ = CausalLMLoss(model, chunk=16, document_masking=True)(ids, pos, labels)
        alone = 0.0
        for i in rows[k]:
            e = examples[i]
            x = torch.from_numpy(e.ids)[None]
            logits = model(input_ids=x[:, :-1]).logits[0]
            y = torch.where(torch.from_numpy(e.target[1:]), x[0, 1:], -100)
            alone += F.cross_entropy(logits.float(), y, ignore_index=-100, reduction="sum")
        unmasked, _ = CausalLMLoss(model, chunk=16, document_masking=False)(ids, pos, labels)
    assert torch.allclose(packed, alone, rtol=2e-6), (packed, alone)
    assert not torch.allclose(unmasked, alone, rtol=2e-5)  # without document masking examples see each other


def test_sampler_state_resumes_exactly(examples):
    a = SFTSampler(SFTRows(examples, 128, 0), seed=5)
    for _ in range(7):
        a.next_batch(4)
    b = SFTSampler(SFTRows(examples, 128, 0), seed=5)
    b.load_state_dict(a.state_dict())
    for _ in range(20):  # across epoch ends
        x, y = a.next_batch(4), b.next_batch(4)
        assert x.windows == y.windows and torch.equal(x.labels, y.labels) and x.global_targets == y.global_targets
    assert a.epoch >= 2
    # data-parallel slices: two ranks together are the one-process batch, and agree on the global target count
    c, r0, r1 = (SFTSampler(SFTRows(examples, 128, 0), seed=5) for _ in range(3))
    whole, p0, p1 = c.next_batch(4), r0.next_batch(4, 0, 2), r1.next_batch(4, 1, 2)
    assert torch.equal(whole.input_ids, torch.cat([p0.input_ids, p1.input_ids]))
    assert whole.global_targets == p0.global_targets == p1.global_targets == int((whole.labels != -100).sum())


def test_epoch_order_differs_and_covers(examples):
    s = SFTSampler(SFTRows(examples, 128, 0), seed=1)
    e0 = [i for r in s.rows(0) for i in r]
    e1 = [i for r in s.rows(1) for i in r]
    assert sorted(e0) == sorted(e1) == list(range(len(examples))) and e0 != e1


def test_eval_rows_in_file_order(examples):
    ev = SFTEvalRows(SFTRows(examples, 128, 0))
    ids, pos, labels = ev.rows([0, 1])
    assert ids.shape == pos.shape == labels.shape == (2, 128)
    assert ids[0, : examples[0].positions].tolist() == examples[0].ids[:-1].tolist()
