"""Step kind `overlap`: exact and near-duplicate documents between each domain's train and test splits
(split hygiene, cptlab.diagnose.overlap).

    - name: overlap
      kind: overlap
      corpus: "${corpus_path}"
      # domains: [legal, code]      train_split: train   test_split: test
      # threshold: 0.8 (MinHash-estimated Jaccard of 5-word shingles)   num_perm: 128   shingle_words: 5

Records the result of `cptlab.diagnose.overlap.overlap` as diagnostic `overlap` (`{"settings": {...},
"domains": {name: {train_docs, test_docs, exact_duplicates, near_duplicates, near_duplicate_fraction,
exact_fraction, near_duplicate_bytes_fraction, examples, ...}}}`), writes it to `overlap.json` in the step dir,
and returns {json, near_duplicate_fraction: {domain: fraction}}.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cptlab.config import StrictModel
from cptlab.study.steps import StepContext, register_step_kind


class OverlapStep(StrictModel):
    corpus: str
    domains: list[str] | None = None
    train_split: str = "train"
    test_split: str = "test"
    threshold: float = Field(0.8, gt=0, le=1)
    num_perm: int = Field(128, ge=16)
    shingle_words: int = Field(5, ge=1)
    seed: int = 1
    txt_mode: Literal["blank-line", "line"] = "blank-line"
    text_field: str = "text"


def overlap_step(step: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Duplicate counts between the train and test split of every domain."""
    from cptlab.corpus import ReadOptions
    from cptlab.diagnose.overlap import OverlapSettings, overlap

    settings = OverlapSettings(train_split=step.get("train_split", "train"), test_split=step.get("test_split", "test"),
                               threshold=float(step.get("threshold", 0.8)), num_perm=int(step.get("num_perm", 128)),
                               shingle_words=int(step.get("shingle_words", 5)), seed=int(step.get("seed", 1)))
    result = overlap(step["corpus"], domains=step.get("domains"), settings=settings,
                     read_options=ReadOptions(txt_mode=step.get("txt_mode", "blank-line"),
                                              text_field=step.get("text_field", "text")))
    path = ctx.write_json_artifact("overlap", result)
    ctx.add_diagnostic("overlap", result)
    return {"json": str(path),
            "near_duplicate_fraction": {d: r["near_duplicate_fraction"] for d, r in result["domains"].items()}}


register_step_kind("overlap", overlap_step, OverlapStep)
