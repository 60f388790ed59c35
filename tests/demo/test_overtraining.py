"""The overtraining demo's study builder, end to end at toy size: pretraining with log-spaced checkpoints during the
constant-LR phase, the checkpoint-sweep study, its report and the printed verdicts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from cptlab.demo.overtraining import FULL, QUICK, OvertrainingSettings, checkpoint_tokens

TOY = OvertrainingSettings(vocab_size=320, hidden=16, layers=1, heads=2, ffn=32, seq_len=32, batch_size=4,
                           pretrain_steps=40, warmup_steps=2, checkpoints=3, first_checkpoint_fraction=1 / 8,
                           target="prose", general=("code",), adapt_steps=2, adapt_warmup=0, adapt_lrs=(1e-3,),
                           adapt_seeds=(0, 1), eval_max_documents=3, sensitivity_gammas=(0.0, 2.0),
                           sensitivity_seeds=2, sensitivity_max_tokens=64)


@pytest.mark.parametrize("s", [FULL, QUICK, TOY])
def test_checkpoints_log_spaced_in_constant_phase(s):
    per_step = s.batch_size * s.seq_len
    tokens = checkpoint_tokens(s)
    assert len(tokens) == s.checkpoints and tokens == sorted(set(tokens))
    assert all(t % per_step == 0 for t in tokens)
    decay_starts = int(s.pretrain_steps * (1 - s.decay_fraction)) * per_step
    assert tokens[-1] <= decay_starts  # no checkpoint inside the LR decay
    if s is not TOY:  # log-spaced: roughly constant ratios
        ratios = [b / a for a, b in zip(tokens, tokens[1:])]
        assert max(ratios) / min(ratios) < 1.05


def test_full_settings_reach_overtrained_regime():
    emb = FULL.vocab_size * FULL.hidden  # tied
    layer = 4 * FULL.hidden ** 2 + 3 * FULL.hidden * FULL.ffn + 2 * FULL.hidden
    params = emb + FULL.layers * layer + FULL.hidden
    tokens = FULL.pretrain_steps * FULL.batch_size * FULL.seq_len
    assert tokens / params > 200  # "hundreds of tokens per parameter"
    assert checkpoint_tokens(FULL)[-1] / params > 200


def test_toy_demo_through_the_cli(tmp_path, tiny_corpus, monkeypatch):
    """`cptlab demo --study overtraining` (TOY settings, the tiny corpus copied in as OUT/corpus): pretraining with
    checkpoints, the checkpoint-sweep study, the report, OUT/results.json; a second run reuses every stage."""
    import shutil

    pytest.importorskip("cptlab.demo.pipeline")
    import cptlab.demo.corpora as corpora
    import cptlab.demo.overtraining as ot
    from cptlab.cli import main

    built = []

    def fake_corpus(out_dir, **kw):  # the machine's real text takes ~1 min to tokenize: use the tiny corpus
        built.append(out_dir)
        if not Path(out_dir).exists():
            shutil.copytree(tiny_corpus, out_dir)
        return {}

    import cptlab.console as console

    monkeypatch.setattr(console, "_quiet", console._quiet)  # --quiet below is undone after the test
    monkeypatch.setattr(corpora, "build_demo_corpus", fake_corpus)
    monkeypatch.setattr(ot, "settings_for", lambda quick: TOY)
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as e:
        main(["demo", "--study", "overtraining", "--out", str(out), "--quiet"])
    assert e.value.code == 0 and built == [out / "corpus"]
    summary = json.loads((out / "results.json").read_text())
    assert summary["study"] == "overtraining" and summary["failed_runs"] == []
    assert Path(summary["report"]) == out / "overtraining" / "report" / "index.html"
    spec = yaml.safe_load((out / "overtraining" / "study.yaml").read_text())
    assert spec["kind"] == "checkpoint-sweep" and spec["options"]["target"] == ["prose"]
    assert summary["target"] == ["prose"] and summary["general"] == ["code"]
    cks = summary["checkpoints"]
    assert [c["tokens"] for c in cks] == checkpoint_tokens(TOY)  # tokens read back from the checkpoints' state
    params = cks[0]["parameters"]
    assert params > 0 and all(c["parameters"] == params for c in cks)
    assert set(summary["verdicts"]) == {"target@0.001", "general@0.001"}
    assert summary["sensitivity"]["gamma"] == 2.0
    tpp = [m["tokens_per_parameter"] for m in summary["sensitivity"]["models"]]
    assert tpp == pytest.approx([t / params for t in checkpoint_tokens(TOY)])
    html = Path(summary["report"]).read_text()
    assert "tokens / parameter" in html and "checkpoint sweep" in html
    # the study's description (top of the report) says how many tokens per parameter each checkpoint saw
    assert f"{params:,} parameters" in html
    assert ", ".join(f"{t / params:.0f}" for t in checkpoint_tokens(TOY)) + " tokens per parameter" in html
    assert "tokens/parameter" in summary["verdicts"]["target@0.001"]["text"]
    assert [r["label"] for r in summary["forgetting"]["0.001"]["checkpoints"]] == [c["name"] for c in cks]
    assert 'class="error"' not in html

    # a second run reuses every stage: nothing is retrained, every run of the study is skipped
    mtime = (out / "overtraining" / "pretrain" / "final" / "config.json").stat().st_mtime_ns
    again = ot.run_overtraining_demo(out, settings=TOY)
    assert again["verdicts"] == summary["verdicts"]
    assert set(again["runs"].values()) == {"skipped"} and set(summary["runs"].values()) == {"done"}
    assert (out / "overtraining" / "pretrain" / "final" / "config.json").stat().st_mtime_ns == mtime
    assert json.loads((out / "overtraining" / "results.json").read_text())["verdicts"] == summary["verdicts"]
    # another adaptation LR: the pretraining is reused, the study starts afresh (no runs of the old LR remain)
    other = ot.run_overtraining_demo(out, settings=replace(TOY, adapt_lrs=(3e-3,)))
    assert set(other["verdicts"]) == {"target@0.003", "general@0.003"} and other["failed_runs"] == []
    assert (out / "overtraining" / "pretrain" / "final" / "config.json").stat().st_mtime_ns == mtime


def test_target_falls_back_to_a_held_out_domain(tmp_path, corpus_docs):
    from cptlab.demo.overtraining import _pick_target
    from cptlab.errors import CptlabError
    from tests.conftest import write_corpus

    root = write_corpus(tmp_path / "c", {"code": corpus_docs["code"], "legal": corpus_docs["prose"]})
    (root / "manifest.json").write_text(json.dumps({"domains": {"code": {"group": "general"},
                                                                "legal": {"group": "held_out"}}}))
    assert _pick_target(root, "legal", ["code"]) == "legal"
    assert _pick_target(root, "pydoc_topics", ["code"]) == "legal"  # not built on this machine: the next one
    with pytest.raises(CptlabError, match="pretraining domains"):
        _pick_target(root, "code", ["code"])
    (root / "manifest.json").write_text(json.dumps({"domains": {"code": {"group": "general"}}}))
    with pytest.raises(CptlabError, match="no domain 'pydoc_topics'"):
        _pick_target(root, "pydoc_topics", ["code"])
