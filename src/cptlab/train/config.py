"""The training config: one pydantic model, small sections, every field documented where it is declared.

`init` vs `resume` (two different things):
- `model.init_from: CHECKPOINT` starts a NEW run whose weights come from a checkpoint (or any HF dir); the
  step counter, schedule (re-warmed) and data position start from zero; with `reset_optimizer: false` the
  optimizer moments are loaded from the checkpoint's `state/` too.
- `resume: true` (CLI `--resume`) continues THIS run (`out_dir`) from its newest complete checkpoint: weights,
  optimizer, RNG states, data position, step and token counts, so the run ends exactly as if never stopped.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from cptlab.config import StrictModel


class ModelConfig(StrictModel):
    name: str  # a local HF dir, a hub name, or a preset (llama-micro, llama-tiny, llama-7m, gpt2-micro, ...)
    init: Literal["pretrained", "scratch"] | None = None  # default: scratch for presets, pretrained otherwise
    context: int | None = Field(None, ge=1)  # presets only: max positions (default: the preset's)
    init_from: str | None = None  # a NEW run starting from these weights (checkpoints/step-X, its model/, an HF dir)
    reset_optimizer: bool = True  # with init_from a checkpoint: False loads its optimizer moments too
    trust_remote_code: bool = False


class DataConfig(StrictModel):
    sources: dict[str, float]  # source (domain, or domain/split) -> weight, e.g. {law: 0.8, general: 0.2}
    cache_dir: str | None = None  # token cache; built here from `corpus` when that is given
    corpus: str | None = None  # corpus to tokenize into the cache (default cache dir: OUT/tokens)
    split: str = "train"
    seq_len: int = Field(256, ge=1)
    document_masking: bool = False  # no attention across document boundaries (position ids restart per doc)
    template: str | dict | None = None  # prompt-based CPT: "{text} It was {label}." or {format, labels, domains}

    @field_validator("sources")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("at least one source is needed")
        for name, w in v.items():
            if w < 0:
                raise ValueError(f"weight of {name} is {w}; weights must be >= 0")
        if sum(v.values()) <= 0:
            raise ValueError("all weights are 0")
        return v

    @model_validator(mode="after")
    def _where(self) -> "DataConfig":
        if self.cache_dir is None and self.corpus is None:
            raise ValueError("give data.cache_dir (a token cache) or data.corpus (to build one)")
        return self


class OptimizerConfig(StrictModel):
    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.1, ge=0)  # on matrices only (not norms, biases)
    eps: float = Field(1e-8, gt=0)
    fused: bool | None = None  # None: fused AdamW where the device supports it
    grad_clip: float | None = Field(1.0, gt=0)  # max global grad norm; None: no clipping


class ScheduleConfig(StrictModel):
    kind: Literal["constant", "cosine", "wsd", "linear"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # final lr = lr * min_lr_ratio (cosine, linear, wsd)
    decay_fraction: float = Field(0.2, gt=0, le=1)  # wsd: last fraction of steps decays linearly
    rewarm: bool = True  # with model.init_from: warm up again (False: start at the peak lr)


class EvalConfig(StrictModel):
    interval: int | None = Field(None, ge=1)  # steps between evaluations (also at the end); None: only at the end
    split: str = "valid"
    domains: list[str] | None = None  # default: the training sources' domains
    max_tokens: int = Field(32768, ge=1)  # per domain
    batch_size: int | None = Field(None, ge=1)  # default: the micro-batch size
    at_end: bool = True


class CheckpointConfig(StrictModel):
    interval: int | None = Field(None, ge=1)  # steps between checkpoints
    at_tokens: list[int] | None = None  # also at the first step reaching each of these token counts
    log_spaced: int | None = Field(None, ge=1)  # also N checkpoints log-spaced in tokens from step 1 to the end
    keep_last: int | None = Field(None, ge=1)  # interval checkpoints kept; token-schedule ones are always kept
    at_end: bool = True  # a checkpoint at the last step (so `resume` of a finished run is a no-op)


class LoraConfig(StrictModel):
    r: int = Field(8, ge=1)
    alpha: float = 16.0
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = ["q_proj", "k_proj", "v_proj", "o_proj"]


class FaultConfig(StrictModel):
    max_consecutive_nonfinite: int = Field(5, ge=1)  # stop after this many skipped steps in a row
    spike_window: int = Field(50, ge=2)  # loss-spike detector: rolling window of steps
    spike_z: float = Field(4.0, gt=0)  # ... a step is a spike when its z-score exceeds this


class RegularizerConfig(StrictModel):
    kind: Literal["kl", "lssd"]
    weight: float = 0.1
    reference: Literal["base", "self"] = "base"
    reference_precision: Literal["fp32", "bf16"] = "fp32"
    temperature: float = 1.0


class TrainConfig(StrictModel):
    model: ModelConfig
    tokenizer: str | None = None  # default: the model dir's tokenizer (presets need one)
    data: DataConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; weights and optimizer stay fp32
    batch_size: int = Field(8, ge=1)  # sequences per optimizer step, over all processes and micro-batches
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step
    max_steps: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)  # token budget: steps = ceil(max_tokens / tokens per step)
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    out_dir: str
    seed: int = Field(0, ge=0)
    regularizer: RegularizerConfig | None = None
    lora: LoraConfig | None = None
    faults: FaultConfig = FaultConfig()
    resume: bool = False  # continue this out_dir's run from its newest complete checkpoint
    overwrite: bool = False  # start afresh in an out_dir that already holds a run (deletes it)
    quiet: bool = False
    compile: bool = False  # torch.compile the model + loss (opt-in)
    fsdp: bool = False  # FSDP instead of DDP when launched with several processes
    log_interval: int = Field(1, ge=1)  # progress-bar refresh (metrics.jsonl always gets every step)
    tensorboard: bool = True
    # CPU: let glibc's malloc keep freed memory instead of page-faulting it back every step (cptlab.host_memory)
    keep_host_memory: bool = True
    # positions per chunk of the cross-entropy (logits never [B,T,V]); 256 rows keep a chunk in cache on CPU:
    # measured 10-20% faster than 1024 for the loss at vocab 8192, equal at 32 k (benchmarks/bench_train.py)
    loss_chunk: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _budget(self) -> "TrainConfig":
        if self.max_steps is None and self.max_tokens is None:
            raise ValueError("give max_steps or max_tokens")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.data.seq_len

    @property
    def total_steps(self) -> int:
        steps = [s for s in (self.max_steps, None if self.max_tokens is None else
                             -(-int(self.max_tokens) // self.tokens_per_step)) if s is not None]
        return min(steps)  # both given: whichever ends first
