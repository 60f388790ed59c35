"""Step kind `similarity`: how similar each domain is to a reference corpus (cptlab.diagnose.similarity).

    - name: similarity
      kind: similarity
      reference: "${pretrain_corpus}"        # corpus root (domains pooled), ROOT:dom1,dom2, or one file
      corpus: "${corpus_path}"
      tokenizer: "${base_model}"             # optional: a tokenizer/model dir (default: words as units)
      measures: [jsd, vocab]                 # or "jsd,vocab,embedding" (default: jsd, vocab, embedding)
      split: train                           # domain split sampled; reference_split defaults to it
      sample_bytes: 8000000                  # or sample_docs: N (per side); seed: 0

Records the whole result dict of `cptlab.diagnose.similarity.similarity` as diagnostic `similarity`
(`{"settings", "reference": {"sample"}, "domains": {name: {jsd, jsd_similarity, vocab_jaccard,
weighted_overlap, embedding_cosine, ..., "sample"}}}`; measures not asked for are absent), writes it to
`similarity.json` in the step dir, and returns {json, domains, measures}.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from cptlab.config import StrictModel
from cptlab.study.steps import StepContext, register_step_kind


class SimilarityStep(StrictModel):
    reference: str
    corpus: str
    tokenizer: str | None = None
    measures: list[str] | str = ["jsd", "vocab", "embedding"]
    split: str = "train"
    reference_split: str | None = None
    domains: list[str] | None = None
    sample_docs: int | None = Field(None, ge=1)
    sample_bytes: int | None = Field(None, ge=1)
    seed: int = 0
    embedding_model: str | None = None
    embedding_docs: int = Field(128, ge=1)
    min_count: int = Field(2, ge=1)
    stream_limit: int = Field(256 * 2**20, ge=0)  # bytes; larger plain .txt/.jsonl sources are seek-sampled
    txt_mode: Literal["blank-line", "line"] = "blank-line"
    text_field: str = "text"

    @field_validator("measures")
    @classmethod
    def _known_measures(cls, value):
        from cptlab.diagnose.similarity import MEASURES

        items = [m.strip() for m in (value.split(",") if isinstance(value, str) else value) if m.strip()]
        bad = [m for m in items if m not in MEASURES]
        if bad or not items:
            raise ValueError(f"unknown measure(s) {bad or '(none given)'}; choose from {', '.join(MEASURES)}")
        return value


def similarity_step(step: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Similarity of every domain to the reference, by the measures asked for."""
    from cptlab.corpus import ReadOptions
    from cptlab.diagnose.similarity import similarity
    from cptlab.diagnose.similarity_sample import make_spec

    spec = make_spec(step.get("sample_docs"), step.get("sample_bytes"), seed=step.get("seed", 0),
                     embedding_docs=step.get("embedding_docs", 128),
                     stream_limit=step.get("stream_limit", 256 * 2**20))
    result = similarity(step["reference"], step["corpus"], tokenizer=step.get("tokenizer"),
                        split=step.get("split", "train"), reference_split=step.get("reference_split"),
                        domains=step.get("domains"), sample=spec,
                        measures=step.get("measures", ["jsd", "vocab", "embedding"]),
                        embedding_model=step.get("embedding_model"), min_count=step.get("min_count", 2),
                        read_options=ReadOptions(txt_mode=step.get("txt_mode", "blank-line"),
                                                 text_field=step.get("text_field", "text")))
    path = ctx.write_json_artifact("similarity", result)
    ctx.add_diagnostic("similarity", result)
    return {"json": str(path), "domains": list(result["domains"]), "measures": result["settings"]["measures"]}


register_step_kind("similarity", similarity_step, SimilarityStep)
