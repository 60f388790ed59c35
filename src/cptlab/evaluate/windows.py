"""Which tokens each forward pass sees and which it scores: lm-evaluation-harness's rolling windows and M2D2's.

A window is `(start, end, n_pred)` over a sequence `x`: the model reads `x[start:end]` and the last `n_pred`
positions are scored, i.e. the targets `x[end - n_pred + 1 : end + 1]`.

lm-eval mode: `x = [prefix] + tokens` (the prefix token lets the first token be predicted). This reproduces
`lm_eval.utils.get_rolling_token_windows(..., context_len=context - stride + 1)` followed by
`make_disjoint_window` and HFLM's `(context + continuation)[-(max_length + 1):][:-1]` input slicing: the
first window predicts the first `min(context, n)` tokens after the prefix; each later window predicts the
next `stride` tokens (fewer at the end) and reads the `context` tokens that end just before its last target,
so a short last window gets as much preceding context as fits. Every token is predicted exactly once.
`stride == context` (the default) is lm-eval's `loglikelihood_rolling`.

m2d2 mode: `x` is the whole domain stream (documents joined with "\\n", no prefix). It reproduces the loop of
M2D2's `lm_scripts/validate_on_multiple_files.py` (the HF "perplexity of fixed-length models" recipe): for
`i in range(0, N, stride)` the model reads `x[max(i + stride - context, 0) : min(i + stride, N)]` and the
labels are the positions from `i` on; the shift inside the HF loss leaves the first position of a window
that starts at `i` unscored (with `stride == context`: the first token of every window).
"""

from __future__ import annotations

import re
from typing import Iterator

Window = tuple[int, int, int]  # (start, end, n_pred) over x

_WS = re.compile(r"\s+")


def count_words(doc: str) -> int:
    """Words as lm-eval counts them: `len(re.split(r"\\s+", doc))` (leading/trailing whitespace counts)."""
    return len(_WS.split(doc))


def count_bytes(doc: str) -> int:
    return len(doc.encode("utf-8"))


def check_window_args(context: int, stride: int) -> None:
    from cptlab.errors import UsageError

    if context < 1:
        raise UsageError(f"--context {context}: must be at least 1")
    if not 1 <= stride <= context:
        raise UsageError(f"--stride {stride}: must be between 1 and the context ({context})")


def rolling_windows(n_tokens: int, context: int, stride: int | None = None) -> list[Window]:
    """lm-eval's rolling windows for a document of `n_tokens` tokens, over `x = [prefix] + tokens`.

    No tokens, no windows (lm-eval scores an empty document as log-likelihood 0).
    """
    stride = context if stride is None else stride
    check_window_args(context, stride)
    if n_tokens <= 0:
        return []
    first = min(context, n_tokens)
    windows = [(0, first, first)]
    predicted = first
    while predicted < n_tokens:
        n_pred = min(n_tokens - predicted, stride)
        end = predicted + n_pred  # in token coordinates; in x coordinates the input ends here too
        windows.append((end - context, end, n_pred))
        predicted = end
    return windows


def m2d2_window(i: int, n_tokens: int, context: int, stride: int) -> tuple[Window, int] | None:
    """M2D2's window for the loop index `i` over a stream of `n_tokens` tokens (no prefix); see the module doc.

    Returns `((start, end, n_pred), trg_len)`, where `trg_len` is the number of labels M2D2's script gives the
    window (one more than `n_pred` when the shift leaves the window's first label unscored); its reported
    perplexity weights each window's mean loss by `trg_len`. None when the window scores nothing.
    """
    begin = max(i + stride - context, 0)
    end_loc = min(i + stride, n_tokens)
    n_pred = end_loc - max(i, begin + 1)
    if n_pred <= 0:
        return None
    return (begin, end_loc - 1, n_pred), end_loc - i


def m2d2_windows(n_tokens: int, context: int, stride: int | None = None) -> Iterator[tuple[Window, int]]:
    """All of M2D2's windows over a stream of `n_tokens` tokens, in order (windows that score nothing left out)."""
    stride = context if stride is None else stride
    check_window_args(context, stride)
    for i in range(0, n_tokens, stride):
        w = m2d2_window(i, n_tokens, context, stride)
        if w is not None:
            yield w
