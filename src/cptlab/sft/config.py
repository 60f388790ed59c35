"""The SFT config: the training config (`cptlab.train.config.TrainConfig`) with an SFT `data` section.

Everything else (model, LoRA, optimizer, schedule, precision, batch, checkpoints, resume, fsdp...) means what it
means for `cptlab train`; the loop is the same (`cptlab.train.loop.train`).

    model: {name: runs/cpt/final}          # the CPT result (or any HF dir / hub name)
    data:
      train: data/sft/train.jsonl          # {"prompt", "response"} or {"messages": [...]} per line
      valid: data/sft/valid.jsonl          # optional: eval loss on its response tokens
      seq_len: 512
    optimizer: {lr: 2.0e-5}
    batch_size: 16
    max_steps: 200
    out_dir: runs/sft
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cptlab.config import StrictModel
from cptlab.train.config import TrainConfig


class SFTDataConfig(StrictModel):
    train: str  # jsonl (or .jsonl.gz) of examples
    valid: str | None = None  # evaluated at eval.interval / at the end on its response tokens
    seq_len: int = Field(512, ge=2)
    format: Literal["auto", "prompt-response", "messages"] = "auto"  # auto: by the fields of each line
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    # auto: messages rows use the tokenizer's chat template, prompt/response rows are plain text;
    # true: prompt/response rows are rendered as a user turn + an assistant turn too; false: no template
    chat_template: bool | Literal["auto"] = "auto"
    chat_template_file: str | None = None  # a Jinja template to set on the tokenizer (saved with the model)
    add_eos: bool = True  # prompt/response rows: EOS after the response (a target)
    packing: bool = True  # several examples per row (never split); false: one example per row, padded
    document_masking: bool = True  # attention stays inside each example (position ids restart per example)
    skip_invalid: bool = False  # skip bad lines (counted and reported) instead of stopping at the first
    # unused by SFT; there so that code written for pretraining data reads the same attributes
    template: None = None

    @property
    def sources(self) -> dict[str, float]:
        return {"sft": 1.0}


class SFTConfig(TrainConfig):
    data: SFTDataConfig  # type: ignore[assignment]
    kind: Literal["sft"] = "sft"
