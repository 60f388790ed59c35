"""`cptlab eval` and `cptlab compare` through the CLI entry point."""

from __future__ import annotations

import json

import pytest

from cptlab.cli import main


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def test_eval_prints_table_and_writes_json(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "ppl.json"
    code = run(["eval", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--domains", "prose",
                "--max-documents", "2", "--context", "64", "--json", str(out), "--token-losses",
                str(tmp_path / "tl.parquet"), "--batch-size", "4", "--device", "cpu"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "prose" in stdout and "token ppl" in stdout
    data = json.loads(out.read_text())
    assert data["settings"]["context"] == 64 and data["settings"]["batch_size"] == 4
    assert data["domains"]["prose"]["documents"] == 2
    assert f"{data['domains']['prose']['token_perplexity']:,.3f}" in stdout
    assert (tmp_path / "tl.parquet").is_file()


@pytest.mark.parametrize("argv,code,message", [
    (["--model", "{missing}"], 1, "directory not found"),
    (["--domains", "nope"], 1, "no domain 'nope'"),
    (["--mode", "bogus"], 2, "--mode 'bogus'"),
    (["--batch-size", "many"], 2, "--batch-size 'many'"),
    (["--stride", "999"], 2, "--stride 999"),
])
def test_eval_errors(tiny_model_dir, tiny_corpus, tmp_path, capsys, argv, code, message):
    argv = [a.replace("{missing}", str(tmp_path / "missing")) for a in argv]
    base = ["eval", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--max-documents", "1"]
    assert run(base + argv) == code
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err  # rich wraps long lines


def test_compare_cli(evaluated, tiny_tokenizer, tiny_corpus, tmp_path, capsys):
    from cptlab.evaluate import perplexity
    from cptlab.model import build_preset

    from .conftest import MAX_DOCS

    _, before = evaluated
    after = tmp_path / "after.parquet"
    perplexity(build_preset("llama-micro", tiny_tokenizer, seed=2), tiny_tokenizer, corpus=tiny_corpus,
               max_documents=MAX_DOCS, token_losses=after)
    out = tmp_path / "cmp.json"
    code = run(["compare", str(before), str(after), "--json", str(out), "--plots", str(tmp_path / "plots"),
                "--exclude", "newline,whitespace", "--top", "5"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "Token classes" in stdout and "Without newline, whitespace" in stdout
    data = json.loads(out.read_text())
    assert data["excluded"]["exclude"] == ["newline", "whitespace"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "class_contributions.png", "delta_nll_hist.png", "domains.png", "top_tokens.png"]


def test_compare_cli_mismatch_exits_1(evaluated, tiny_model_dir, tiny_corpus, tmp_path, capsys):
    _, before = evaluated
    other = tmp_path / "other.parquet"
    assert run(["eval", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--domains", "prose",
                "--max-documents", "1", "--token-losses", str(other), "--quiet"]) == 0
    capsys.readouterr()
    assert run(["compare", str(before), str(other)]) == 1
    assert "different domains" in " ".join(capsys.readouterr().err.split())


def test_help_has_examples(capsys):
    assert run(["eval", "--help"]) == 0
    assert "Example: cptlab eval" in capsys.readouterr().out
    assert run(["compare", "--help"]) == 0
    assert "Example: cptlab compare" in capsys.readouterr().out


ISSUE_FLAGS = ["--model", "--corpus", "--split", "--domains", "--context", "--stride", "--mode", "--batch-size",
               "--precision", "--token-losses", "--json"]
DOMAIN_FIELDS = {"documents", "tokens", "words", "bytes", "nll_sum", "token_perplexity", "word_perplexity",
                 "byte_perplexity", "bits_per_byte"}


def test_every_flag_of_the_issue_reaches_the_json(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    """The interface of issue 4, flag by flag, with non-default values; the JSON says what was used."""
    from cptlab.evaluate import read_token_losses

    assert run(["eval", "--help"]) == 0
    help_text = capsys.readouterr().out
    for flag in ISSUE_FLAGS:
        assert flag in help_text, flag
    out, tl = tmp_path / "r.json", tmp_path / "tl.parquet"
    code = run(["eval", "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus), "--split", "valid",
                "--domains", "code", "--context", "64", "--stride", "48", "--mode", "m2d2", "--batch-size", "3",
                "--precision", "bf16", "--token-losses", str(tl), "--json", str(out), "--max-documents", "3",
                "--quiet"])
    assert code == 0
    data = json.loads(out.read_text())
    s = data["settings"]
    assert (s["split"], s["context"], s["stride"], s["mode"], s["precision"], s["batch_size"]) == (
        "valid", 64, 48, "m2d2", "bf16", 3)
    assert s["model"] == str(tiny_model_dir) and s["tokenizer"] == str(tiny_model_dir)
    assert list(data["domains"]) == ["code"] and set(data["domains"]["code"]) == DOMAIN_FIELDS
    losses = read_token_losses(tl)
    assert losses.settings["mode"] == "m2d2" and len(losses) == data["domains"]["code"]["tokens"]
