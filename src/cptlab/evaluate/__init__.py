"""Evaluation: perplexity per domain (token/word/byte, as lm-evaluation-harness defines them), per-token losses
saved as parquet, and the token-level comparison of two evaluations.

Public API:
    perplexity(model, tokenizer=None, corpus=..., split="test", domains=None, context=None, stride=None,
               mode="lm-eval"|"m2d2", batch_size="auto"|int, precision="fp32"|"bf16", token_losses=None,
               max_documents=None, device=None) -> EvalResult          (EvalResult.to_dict() is the JSON)
    compare_token_losses(before, after, exclude=None, domains=None, top=30) -> dict
    token_class(text) -> str                                      (newline, whitespace, punctuation, digits,
                                                                   word-start, subword)
Modules: windows (which tokens each forward reads and scores), scoring (the batched engine), ppl
(streaming over a corpus, the metrics), token_losses (the parquet files), compare (before/after attribution).
Heavy libraries (torch, transformers, pyarrow) are imported inside the functions that need them.
"""

from __future__ import annotations

from cptlab.evaluate.compare import compare_token_losses, token_class
from cptlab.evaluate.ppl import DomainResult, EvalResult, perplexity
from cptlab.evaluate.token_losses import read_token_losses

__all__ = ["DomainResult", "EvalResult", "compare_token_losses", "perplexity", "read_token_losses", "token_class"]
