"""The demo end to end at a very small size: corpus from this machine -> tokenizer -> cache -> base -> study."""

import json
import math

import pytest

from cptlab.demo.pipeline import DemoSettings, QUICK, run_demo

# Everything tiny: ~20 s on 2 cores. The real `cptlab demo --quick` settings are QUICK.
SMALL = DemoSettings(vocab_size=1024, preset="llama-micro", seq_len=64, batch_size=4, pretrain_steps=12,
                     pretrain_warmup=2, adapt_steps=3, adapt_warmup=1, adapt_lrs=(1e-3,), eval_max_documents=3,
                     adapt_domains=("man_en", "legal"), corpus_max_domain_bytes=120_000, corpus_max_file_bytes=4000,
                     similarity_measures=("jsd", "vocab"), similarity_sample_bytes=200_000,
                     task_per_domain=3, task_chars=60, sft_per_domain=6, sft_steps=2, sft_seq_len=128)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, settings=SMALL)


def test_small_demo_writes_results(small_demo):
    out, results = small_demo
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["settings"]["pretrain_steps"] == SMALL.pretrain_steps
    assert set(on_disk["general"]) <= {"stdlib_core", "stdlib_tests", "changelogs", "man_en"}
    assert on_disk["general"], "no general domain was built"
    # before/after perplexities are finite and every adapted domain has its diagonal entry
    for row in on_disk["runs"]:
        for d, cell in row["domains"].items():
            assert math.isfinite(cell["ppl_before"]) and cell["ppl_before"] > 1
            assert math.isclose(cell["delta"], cell["ppl_after"] / cell["ppl_before"] - 1, rel_tol=1e-9)
    targets = {row["target"] for row in on_disk["runs"]}
    assert "control" in targets
    assert set(SMALL.adapt_domains) & set(on_disk["general"] + on_disk["held_out"]) <= targets


def test_small_demo_measures_the_task_before_and_after_cpt_and_sft(small_demo):
    out, results = small_demo
    models = {r["model"] for r in results["tasks"]}
    adapted = {row["target"] for row in results["runs"]}  # the control and the adapt_domains this machine has
    assert "legal" in adapted
    # base, every adapted model, and the SFT of the base and of the chosen targets (control, legal)
    assert models == {"base", "base+sft", "cpt:control+sft", "cpt:legal+sft"} | {f"cpt:{d}" for d in adapted}
    n_domains = len(results["general"]) + len(results["held_out"])
    assert all(r["n"] == 3 * n_domains and 0 <= r["acc"] <= 1 for r in results["tasks"])
    items = [json.loads(line) for line in (out / "tasks" / "which_domain.jsonl").read_text().splitlines()]
    assert len(items) == 3 * n_domains and all(len(i["choices"]) == n_domains for i in items)
    html = (out / "study" / "report" / "index.html").read_text()
    assert "Does CPT help after fine-tuning?" in html and "base → CPT (legal) → SFT" in html


def test_demo_reuses_finished_stages(small_demo):
    out, _ = small_demo
    stamps = json.loads((out / "stages.json").read_text())
    mtime = (out / "base" / "final" / "config.json").stat().st_mtime
    run_demo(out, settings=SMALL)
    assert (out / "base" / "final" / "config.json").stat().st_mtime == mtime  # base not retrained
    assert json.loads((out / "stages.json").read_text()) == stamps


def test_quick_settings_fit_the_budget():
    # RESEARCH-NOTES: ~15 k tok/s training on 2 cores -> the quick pretraining must stay around 1-2 minutes.
    tokens = QUICK.pretrain_steps * QUICK.batch_size * QUICK.seq_len
    assert tokens <= 1_500_000
