"""The scoring engine: run windows through a causal LM in length-sorted batches and return per-token NLLs.

Speed without changing the numbers:
- windows of many documents are sorted by length and batched together (right padding, no attention mask:
  a causal model never lets a real position see the padding to its right, exactly as lm-eval's HFLM does);
- `batch_size="auto"` fills a token budget per batch (tuned for CPU; from free memory on CUDA) and halves it
  on an out-of-memory error;
- the output layer runs only on the scored positions, in row chunks of ~2 M logits, and only the target's
  log-probability is kept (`log_softmax` of the chunk in fp32, gathered): no full `[batch, length, vocab]` tensor;
- `torch.inference_mode`, and optional bf16 autocast (`precision="bf16"`);
- on CPU, batches run on one worker thread per torch thread (up to 8), each batch single-threaded (torch's
  thread count is set to 1 while scoring and restored after), at least two batches per worker: the same numbers,
  but no fork/join between cores at every operation. On a quiet 2-core machine this is as fast as torch's own
  intra-op threads; when other processes hold a core, intra-op threads stall at every barrier (3-5x slower
  than one thread on the busy benchmark machine) while workers keep going (see BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cptlab.errors import UsageError
from cptlab.evaluate.windows import Window

# Model types whose causal-LM forward is exactly `output_embeddings(base_model(x).last_hidden_state)`.
# For these the head runs only on scored positions; any other model goes through its own forward.
PLAIN_HEAD_MODEL_TYPES = {
    "llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "olmo", "olmo2", "phi3", "gemma", "smollm3",
}
_SCALED_LOGITS_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")

PRECISIONS = ("fp32", "bf16", "fp16")  # fp32 weights; bf16/fp16 = autocast of the matmuls
CPU_TOKEN_BUDGET = 2048  # tokens per forward on CPU (auto): 1024 and 2048 equal, 4096 ~5% slower (same test)
# rows * vocab of fp32 logits alive at once (8 MB). Measured on the 2-core benchmark CPU (llama-7m, vocab 8192,
# tokens per CPU-second): 1<<19 (64 rows) 3.6-3.7 k, 1<<20 3.9-4.0 k, 1<<21 4.0-4.2 k, 1<<22 4.0-4.2 k,
# 1<<24 3.8-4.1 k: the head's matmul wants a few hundred rows more than the logits want to stay in cache.
HEAD_CHUNK_ELEMENTS = 1 << 21
MAX_CPU_WORKERS = 8  # more would multiply activation memory for little gain; extra threads go inside each worker


@dataclass
class Job:
    """One window of one sequence: the model reads `seq[start:end]`, scores the last `n_pred` positions."""

    seq: int
    start: int
    end: int
    n_pred: int

    @property
    def length(self) -> int:
        return self.end - self.start


def parse_batch_size(batch_size) -> int | None:
    """`"auto"` -> None; a positive int (or its string) -> int; anything else is a usage error."""
    if batch_size is None or batch_size == "auto":
        return None
    try:
        value = int(batch_size)
    except (TypeError, ValueError):
        raise UsageError(f"--batch-size {batch_size!r}: expected a positive integer or 'auto'") from None
    if value < 1:
        raise UsageError(f"--batch-size {batch_size}: expected a positive integer or 'auto'")
    return value


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def split_head(model):
    """(body, head) when the model's logits are plainly `head(body(x).last_hidden_state)`, else None."""
    from transformers import PreTrainedModel

    config = getattr(model, "config", None)
    if not isinstance(model, PreTrainedModel) or config is None:
        return None
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    if not type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        return None
    if any(getattr(config, a, None) not in (None, 1, 1.0) for a in _SCALED_LOGITS_ATTRS):
        return None
    body = getattr(model, model.base_model_prefix, None)
    head = model.get_output_embeddings()
    if body is None or head is None or body is model:
        return None
    return body, head


class Scorer:
    """Scores windows of token sequences with one model; reusable across calls (keeps its batch-size state)."""

    def __init__(self, model, batch_size="auto", precision: str = "fp32", device=None,
                 token_budget: int | None = None, use_head_split: bool = True, cpu_workers: bool = True):
        import torch

        self.model = model
        self.model.eval()
        self.fixed_batch = parse_batch_size(batch_size)
        self.precision = check_precision(precision)
        try:
            param = next(model.parameters())
        except StopIteration:
            raise UsageError("model has no parameters") from None
        self.device = torch.device(device) if device is not None else param.device
        if param.device != self.device:
            self.model.to(self.device)
        self.split = split_head(model) if use_head_split else None
        self.token_budget = token_budget or self._default_budget()
        self.vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None \
            else model.config.vocab_size
        self.cpu_workers = cpu_workers
        self.forwards = 0
        self.tokens_read = 0

    def _default_budget(self) -> int:
        import torch

        if self.device.type != "cuda":
            return CPU_TOKEN_BUDGET
        free, _total = torch.cuda.mem_get_info(self.device)
        cfg = self.model.config
        hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 1024)
        ffn = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
        per_token = 4 * (3 * ffn + 8 * hidden)  # the widest activations of one layer, fp32, with slack
        return int(max(1024, min(1 << 20, 0.4 * free / per_token)))

    def _rows_for(self, length: int) -> int:
        if self.fixed_batch is not None:
            return self.fixed_batch
        return max(1, self.token_budget // max(1, length))

    def score(self, seqs: list[np.ndarray], jobs: list[Job]) -> list[np.ndarray]:
        """Per sequence, a float32 array of len(seq): NLL of `seq[k]` where scored, NaN elsewhere."""
        out = [np.full(len(s), np.nan, dtype=np.float32) for s in seqs]
        order = sorted(range(len(jobs)), key=lambda j: (-jobs[j].length, jobs[j].seq, jobs[j].start))
        sorted_jobs = [jobs[j] for j in order]
        workers = self._cpu_workers()
        if workers > 1:
            results = self._score_parallel(seqs, sorted_jobs, workers)
        else:
            results = self._score_sequential(seqs, sorted_jobs)
        for batch, nll in results:
            offset = 0
            for job in batch:
                first = job.end - job.n_pred + 1
                out[job.seq][first:job.end + 1] = nll[offset:offset + job.n_pred]
                offset += job.n_pred
            self.forwards += 1
            self.tokens_read += sum(j.length for j in batch)
        return out

    def _cpu_workers(self) -> int:
        """On CPU: one worker per torch thread (at most MAX_CPU_WORKERS), each running whole batches with the
        remaining threads shared out (one each on a machine with up to MAX_CPU_WORKERS threads)."""
        import torch

        if self.device.type != "cpu" or not self.cpu_workers:
            return 1
        return max(1, min(MAX_CPU_WORKERS, torch.get_num_threads()))

    def _score_sequential(self, seqs, jobs: list[Job]):
        pos = 0
        while pos < len(jobs):
            rows = self._rows_for(jobs[pos].length)
            batch = jobs[pos:pos + rows]
            try:
                nll = self._forward(seqs, batch)
            except Exception as e:  # out of memory: halve the batch (auto mode) and retry
                if not _is_oom(e) or len(batch) == 1 or self.fixed_batch is not None:
                    raise
                _free_cuda()
                self.token_budget = max(1, (len(batch) // 2) * batch[0].length)
                continue
            yield batch, nll
            pos += len(batch)

    def _score_parallel(self, seqs, jobs: list[Job], workers: int):
        """Batches planned up front, run by `workers` threads with one torch thread each; results in plan order.
        The torch thread count is restored afterwards."""
        import torch
        from concurrent.futures import ThreadPoolExecutor

        # auto: at least two batches per worker, so that a small evaluation keeps every core busy to the end
        budget = self.token_budget
        if self.fixed_batch is None:
            budget = min(budget, max(1, -(-sum(j.length for j in jobs) // (2 * workers))))
        batches, pos = [], 0
        while pos < len(jobs):
            rows = self.fixed_batch or max(1, budget // jobs[pos].length)
            batches.append(jobs[pos:pos + rows])
            pos += rows

        def run(batch):
            try:
                return [(batch, self._forward(seqs, batch))]
            except Exception as e:  # out of memory: split in halves (auto mode)
                if not _is_oom(e) or len(batch) == 1 or self.fixed_batch is not None:
                    raise
                half = len(batch) // 2
                self.token_budget = min(self.token_budget, max(1, half * batch[0].length))
                return run(batch[:half]) + run(batch[half:])

        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // workers))  # new threads start with this count
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cptlab-score")
        try:
            for parts in pool.map(run, batches):
                yield from parts
        finally:  # on an error (or Ctrl-C), batches not started yet are dropped, not run
            pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(threads)

    def _forward(self, seqs: list[np.ndarray], batch: list[Job]) -> np.ndarray:
        import torch

        width = max(j.length for j in batch)
        ids = np.zeros((len(batch), width), dtype=np.int64)  # padding id 0: never seen by a real position
        rows, cols, targets = [], [], []
        for r, job in enumerate(batch):
            seq = seqs[job.seq]
            ids[r, :job.length] = seq[job.start:job.end]
            rows.append(np.full(job.n_pred, r, dtype=np.int64))
            cols.append(np.arange(job.length - job.n_pred, job.length, dtype=np.int64))
            targets.append(np.asarray(seq[job.end - job.n_pred + 1:job.end + 1], dtype=np.int64))
        dev = self.device
        input_ids = torch.from_numpy(ids).to(dev)
        row_t = torch.from_numpy(np.concatenate(rows)).to(dev)
        col_t = torch.from_numpy(np.concatenate(cols)).to(dev)
        tgt_t = torch.from_numpy(np.concatenate(targets)).to(dev)
        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        autocast = torch.autocast(device_type=dev.type, dtype=low or torch.bfloat16, enabled=low is not None)
        with torch.inference_mode(), autocast:
            if self.split is not None:
                body, head = self.split
                hidden = body(input_ids=input_ids, use_cache=False).last_hidden_state[row_t, col_t]
                nll = self._head_nll(lambda a, b: head(hidden[a:b]), tgt_t)
            else:
                logits = self.model(input_ids=input_ids, use_cache=False).logits[row_t, col_t]
                nll = self._head_nll(lambda a, b: logits[a:b], tgt_t)
        return nll.cpu().numpy()

    def _head_nll(self, logits_of, targets):
        import torch

        n = targets.shape[0]
        chunk = max(1, HEAD_CHUNK_ELEMENTS // max(1, self.vocab))
        parts = []
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            # log_softmax is one fused pass on CPU and GPU (logsumexp is several); the chunk stays in cache
            logp = torch.log_softmax(logits_of(a, b).float(), dim=-1)
            parts.append(-logp.gather(1, targets[a:b, None]).squeeze(1))
        return torch.cat(parts) if parts else torch.zeros(0)


def _is_oom(e: Exception) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def jobs_for(seq: int, windows: list[Window]) -> list[Job]:
    return [Job(seq, s, e, n) for (s, e, n) in windows]
