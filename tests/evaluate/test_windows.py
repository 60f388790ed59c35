"""Rolling windows (lm-eval mode) and M2D2's windows, pinned by hand and checked against the reference code."""

from __future__ import annotations

import pytest
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from cptlab.errors import UsageError
from cptlab.evaluate.windows import count_words, m2d2_windows, rolling_windows


def lm_eval_windows(tokens: list[int], prefix: int, context: int, stride: int):
    """What HFLM feeds the model: (input tokens, predicted tokens) per window."""
    out = []
    for ctx, cont in map(make_disjoint_window,
                         get_rolling_token_windows(tokens, prefix, context, context - stride + 1)):
        full = (ctx + cont)[-(context + 1):][:-1]  # HFLM._loglikelihood_tokens' input slicing
        out.append((full, cont))
    return out


def ours(tokens: list[int], prefix: int, context: int, stride: int):
    x = [prefix] + tokens
    return [(x[s:e], x[e - n + 1:e + 1]) for s, e, n in rolling_windows(len(tokens), context, stride)]


def test_pinned_short_document():
    assert rolling_windows(3, context=4) == [(0, 3, 3)]  # reads [P t0 t1], predicts t0 t1 t2


def test_pinned_exact_multiple():
    # 8 tokens, context 4: [P t0 t1 t2] -> t0..t3 ; [t3 t4 t5 t6] -> t4..t7 (x = P t0 ... t7, x[k+1] = t_k)
    assert rolling_windows(8, context=4) == [(0, 4, 4), (4, 8, 4)]


def test_pinned_long_document_last_window_gets_full_context():
    # 10 tokens, context 4: the last window predicts t8 t9 and reads the 4 tokens before t9: t5 t6 t7 t8
    assert rolling_windows(10, context=4) == [(0, 4, 4), (4, 8, 4), (6, 10, 2)]


def test_pinned_sliding_windows():
    # stride 2: after the first window, each predicts 2 new tokens with 4 tokens of input
    assert rolling_windows(7, context=4, stride=2) == [(0, 4, 4), (2, 6, 2), (3, 7, 1)]


def test_empty_document_has_no_windows():
    assert rolling_windows(0, context=4) == []
    assert lm_eval_windows([], 0, 4, 4) == []


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31])
@pytest.mark.parametrize("context,stride", [(1, 1), (4, 4), (4, 1), (4, 3), (5, 2), (8, 8)])
def test_same_windows_as_lm_eval(n, context, stride):
    tokens = list(range(100, 100 + n))
    assert ours(tokens, 7, context, stride) == lm_eval_windows(tokens, 7, context, stride)


@pytest.mark.parametrize("n", [1, 5, 12, 40])
@pytest.mark.parametrize("context,stride", [(4, 4), (4, 2), (8, 3)])
def test_every_token_predicted_exactly_once(n, context, stride):
    predicted = []
    for s, e, k in rolling_windows(n, context, stride):
        assert e - s <= context
        predicted += list(range(e - k + 1, e + 1))
    assert predicted == list(range(1, n + 1))  # x positions 1..n are the document's tokens


def m2d2_reference(n: int, context: int, stride: int):
    """M2D2's validate_on_multiple_files.eval_ppl loop: which stream positions each window scores."""
    out = []
    for i in range(0, n, stride):
        begin = max(i + stride - context, 0)
        end = min(i + stride, n)
        trg_len = end - i
        labels = list(range(begin, end))
        labels = [p if k >= len(labels) - trg_len else None for k, p in enumerate(labels)]
        scored = [p for p in labels[1:] if p is not None]  # the loss shifts labels by one
        out.append((begin, end, scored, trg_len))
    return out


@pytest.mark.parametrize("n", [1, 2, 5, 8, 9, 23])
@pytest.mark.parametrize("context,stride", [(4, 4), (4, 2), (6, 5)])
def test_m2d2_windows_match_its_script(n, context, stride):
    ref = [(b, sc, t) for b, _e, sc, t in m2d2_reference(n, context, stride) if sc]
    got = [(s, list(range(e - k + 1, e + 1)), t) for (s, e, k), t in m2d2_windows(n, context, stride)]
    assert got == ref


def test_m2d2_stride_equal_context_skips_first_token_of_each_window():
    assert [w for w, _ in m2d2_windows(8, 4)] == [(0, 3, 3), (4, 7, 3)]


def test_bad_window_arguments():
    with pytest.raises(UsageError, match="--stride 5"):
        rolling_windows(10, context=4, stride=5)
    with pytest.raises(UsageError, match="--context 0"):
        rolling_windows(10, context=0)


def test_word_count_is_lm_eval_s():
    assert count_words("a b") == 2
    assert count_words(" a  b\n") == 4  # re.split counts the empty strings at both ends
    assert count_words("") == 1
