"""Log-likelihood of each choice of a multiple-choice item, exactly as lm-evaluation-harness's HFLM computes it.

Per (item, choice) request `(context, target_delimiter + choice)` (lm-eval `ConfigurableTask.construct_requests`):
- empty context: the continuation is encoded without special tokens and conditioned on the prefix token
  (BOS if the tokenizer has one, else EOS), unless it already starts with that token (`LM.loglikelihood`);
- else trailing whitespace of the context moves to the continuation, `whole = encode(context + continuation)`,
  `ctx = encode(context)`, continuation tokens = `whole[len(ctx):]` (`_encode_pair`); `encode` adds the
  tokenizer's default special tokens (a Llama tokenizer's BOS, none for GPT-2's) except for a string that starts
  with the prefix token's text (`HFLM.tok_encode`);
- the model reads `(ctx + cont)[-(max_length + 1):][:-1]` (truncated from the left) and the log-probabilities
  of the continuation tokens are summed (`_loglikelihood_tokens`).
Rows run through the shared batched engine (`scoring.Scorer`: length-sorted, right-padded, no attention mask,
fp32 log-softmax), one row per (item, choice).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from cptlab.errors import CptlabError
from cptlab.evaluate.scoring import Job, Scorer
from cptlab.evaluate.tasks import ChoiceItem, ChoiceTask


def mean_stderr(values: list[float]) -> float | None:
    """lm-eval's `mean_stderr`: sample standard deviation (n - 1) / sqrt(n); None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return (sum((x - mu) ** 2 for x in values) / (n - 1)) ** 0.5 / n ** 0.5


def choice_metrics(lls: list[float], choices: list[str], gold: int) -> dict[str, Any]:
    """pred / pred_norm (np.argmax: first index on ties) and acc / acc_norm of one item, as lm-eval's
    `process_results` for `multiple_choice`."""
    lls_a = np.asarray(lls, dtype=np.float64)
    pred = int(np.argmax(lls_a))
    pred_norm = int(np.argmax(lls_a / np.array([float(len(c)) for c in choices])))
    return {"pred": pred, "pred_norm": pred_norm, "acc": float(pred == gold), "acc_norm": float(pred_norm == gold)}


class ChoiceScorer:
    """Scores multiple-choice tasks with one model and tokenizer (lm-eval's HFLM defaults: no `add_bos_token`
    override, max length from the model config)."""

    def __init__(self, model, tokenizer, batch_size="auto", precision: str = "fp32", device=None):
        from cptlab.evaluate.ppl import model_max_length, prefix_token_id

        self.tok = tokenizer
        self.max_length = model_max_length(model, tokenizer)
        self.prefix = prefix_token_id(tokenizer)
        self.prefix_text = tokenizer.decode(self.prefix)
        self.scorer = Scorer(model, batch_size=batch_size, precision=precision, device=device)

    # -- encoding (lm-eval HFLM)

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        kwargs = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif self.prefix_text and text.startswith(self.prefix_text):
            kwargs["add_special_tokens"] = False
        return list(self.tok.encode(text, **kwargs))

    def encode_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix:
                return cont[:1], cont[1:]
            return [self.prefix], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):]

    # -- scoring

    def loglikelihoods(self, requests: list[tuple[str, str]], where: list[str] | None = None) -> list[float]:
        """Summed log-probability of each continuation given its context."""
        seqs, jobs = [], []
        for k, (context, continuation) in enumerate(requests):
            ctx, cont = self.encode_request(context, continuation)
            label = where[k] if where else f"request {k}"
            if not ctx or not cont:
                raise CptlabError(f"{label}: the {'context' if not ctx else 'choice'} encodes to no tokens")
            if len(cont) > self.max_length:
                raise CptlabError(f"{label}: the choice is {len(cont)} tokens, longer than the model's maximum "
                                  f"length {self.max_length}")
            ids = np.asarray((ctx + cont)[-(self.max_length + 1):], dtype=np.int64)
            seqs.append(ids)
            jobs.append(Job(k, 0, len(ids) - 1, len(cont)))
        nlls = self.scorer.score(seqs, jobs) if jobs else []
        # each row's array is NaN except at its scored (continuation) positions
        return [-float(np.nansum(nll.astype(np.float64))) for nll in nlls]

    def contexts(self, task: ChoiceTask, items: list[ChoiceItem]) -> list[str]:
        """The prompt of each item: description, few-shot examples (lm-eval's sampler: one random.Random(seed)
        drawing `n` examples per item in order, `n + 1` with the item itself removed when they come from the
        task's own items), then the item's context."""
        if task.num_fewshot == 0:
            return [task.description + it.context for it in items]
        same = task.fewshot_items is None
        pool = task.items if same else task.fewshot_items
        rnd = random.Random(task.fewshot_seed)
        n = task.num_fewshot
        out = []
        for it in items:
            if same:
                drawn = [x for x in rnd.sample(pool, n + 1) if x.doc != it.doc][:n]
                if len(drawn) < n:
                    drawn = rnd.sample([x for x in pool if x.doc != it.doc], n)
            else:
                drawn = rnd.sample(pool, n)
            shots = "".join(f"{x.context}{task.target_delimiter}{x.choices[x.gold]}{task.fewshot_delimiter}"
                            for x in drawn)
            out.append(task.description + shots + it.context)
        return out

    def evaluate(self, task: ChoiceTask, limit: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(the task's metrics dict, one sample row per item)."""
        cap = min(x for x in (limit, task.limit) if x is not None) if (limit or task.limit) else None
        items = task.items[:cap] if cap else task.items
        contexts = self.contexts(task, items)
        requests, where = [], []
        for it, ctx in zip(items, contexts):
            for j, choice in enumerate(it.choices):
                requests.append((ctx, f"{task.target_delimiter}{choice}"))
                where.append(f"{task.path}:{it.line}: choice {j}")
        lls = self.loglikelihoods(requests, where)
        rows, pos = [], 0
        for i, it in enumerate(items):
            item_lls = lls[pos:pos + len(it.choices)]
            pos += len(it.choices)
            rows.append({"task": task.name, "index": i, "line": it.line, "gold": it.gold,
                         **choice_metrics(item_lls, it.choices, it.gold), "loglikelihoods": item_lls})
        acc = [r["acc"] for r in rows]
        acc_norm = [r["acc_norm"] for r in rows]
        result = {
            "acc": sum(acc) / len(acc), "acc_stderr": mean_stderr(acc),
            "acc_norm": sum(acc_norm) / len(acc_norm), "acc_norm_stderr": mean_stderr(acc_norm),
            "n": len(rows), "source": "cptlab", "file": str(task.file), "config": task.settings(),
        }
        return result, rows
