"""The SFT run's data: the training sampler and the validation rows, from `data.train` / `data.valid`."""

from __future__ import annotations

from pathlib import Path

from cptlab.console import log
from cptlab.errors import CptlabError


def set_chat_template(cfg, tokenizer) -> None:
    """`data.chat_template_file`: the template the tokenizer renders with (and is saved with)."""
    path = cfg.data.chat_template_file
    if path is None:
        return
    p = Path(path).expanduser()
    if not p.is_file():
        raise CptlabError(f"data.chat_template_file: {p}: not found")
    tokenizer.chat_template = p.read_text(encoding="utf-8")


def pad_id(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def build_sources(cfg, tokenizer, with_eval: bool):
    """(SFTSampler over data.train, {"sft": SFTEvalRows over data.valid} or {})."""
    from cptlab.sft.data import load_sft_data
    from cptlab.sft.packing import SFTEvalRows, SFTRows, SFTSampler

    d = cfg.data
    set_chat_template(cfg, tokenizer)
    train = load_sft_data(d.train, tokenizer, d, d.seq_len, "data.train")
    _report(train, "data.train")
    sampler = SFTSampler(SFTRows(train.examples, d.seq_len, pad_id(tokenizer), "sft"), seed=cfg.seed,
                         packing=d.packing)
    evals = {}
    if with_eval and d.valid is not None:
        valid = load_sft_data(d.valid, tokenizer, d, d.seq_len, "data.valid")
        _report(valid, "data.valid")
        evals["sft"] = SFTEvalRows(SFTRows(valid.examples, d.seq_len, pad_id(tokenizer), "sft"), d.packing)
    s = train.summary()
    log(f"sft data: {s['examples']:,} examples, {s['target_tokens']:,} response tokens of {s['tokens']:,}; "
        f"{sampler.num_rows:,} rows of {d.seq_len} per epoch ({'packed' if d.packing else 'one example per row'})")
    return sampler, evals, train


def _report(data, what: str) -> None:
    if data.skipped:
        log(f"{what}: {data.path}: skipped {sum(data.skipped.values())} invalid line(s): "
            + ", ".join(f"{n} {reason}" for reason, n in sorted(data.skipped.items())))
    if data.truncated:
        log(f"{what}: {data.path}: {data.truncated} example(s) longer than data.seq_len; their responses were cut")
