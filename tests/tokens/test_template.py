"""Prompt-based CPT: documents wrapped in a template, labels from the record or a labels file, cached and trained on."""

from __future__ import annotations

import json
import math

import pytest

from cptlab.corpus import ReadOptions, ReadStats, SplitSource, iter_documents
from cptlab.corpus.template import Template, parse_template
from cptlab.errors import CptlabError, UsageError
from cptlab.tokens.token_cache import build_cache, open_tokens
from tests.corpus.helpers import run_cli, write_jsonl, write_parquet, write_txt

FMT = "{text} It was {label}."


def _label(doc: str) -> str:
    return "long" if len(doc) > 300 else "short"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, corpus_docs):
    """`rev` (jsonl with a `label` field, train/test) and `gen` (plain .txt) domains, and the expected documents."""
    root = tmp_path_factory.mktemp("pcp")
    docs = [d for d in corpus_docs["prose"][:60] if d.strip()]
    train, test = docs[:45], docs[45:]
    write_jsonl(root / "rev" / "train.jsonl", [{"text": d, "label": _label(d), "id": i} for i, d in enumerate(train)])
    write_jsonl(root / "rev" / "test.jsonl", [{"text": d, "label": _label(d)} for d in test])
    gen = [d.replace("\n\n", "\n") for d in corpus_docs["code"][:30]]
    write_txt(root / "gen" / "train.txt", "\n\n".join(gen) + "\n")
    return root, train, test, gen


def _decoded(tok, cache, domain, split):
    t = open_tokens(cache, domain, split)
    return [tok.decode(t.document(i).tolist()) for i in range(t.num_docs)]


def test_template_parsing_and_errors():
    t = parse_template({"format": FMT, "labels": "l/{domain}.txt", "domains": ["rev"]})
    assert t.fields == ("label",) and t.applies_to("rev") and not t.applies_to("gen")
    assert t.render("Great film", {"label": "good"}) == "Great film It was good."
    assert parse_template("{{literal}} {text}").render("x", {}) == "{literal} x"
    assert parse_template(None) is None and parse_template(t) is t
    for bad, message in [("It was {label}.", "must contain {text}"), ("{text} {0}", "must be a plain name"),
                         ("{text} {label.__class__}", "must be a plain name"), ("{text", "expected '}'"),
                         ({"format": FMT, "label": "x"}, "unknown key\\(s\\) label"), ({"labels": "x"}, "'format'"),
                         (3, "expected a format string")]:
        with pytest.raises(UsageError, match=message):
            parse_template(bad)
    with pytest.raises(UsageError, match="template"):
        ReadOptions(template="no text field")
    assert isinstance(ReadOptions(template=FMT).template, Template)


def test_cache_decodes_to_templated_documents(tmp_path, labelled, tiny_tokenizer_dir, tiny_tokenizer):
    root, train, test, gen = labelled
    cache = tmp_path / "cache"
    s = build_cache(root, tiny_tokenizer_dir, cache, workers=1, template={"format": FMT, "domains": ["rev"]})
    expected = [f"{d} It was {_label(d)}." for d in train]  # independent of the template code
    assert _decoded(tiny_tokenizer, cache, "rev", "train") == expected
    assert _decoded(tiny_tokenizer, cache, "rev", "test") == [f"{d} It was {_label(d)}." for d in test]
    assert _decoded(tiny_tokenizer, cache, "gen", "train") == gen  # not templated: not in template.domains
    m = open_tokens(cache, "rev", "train").manifest
    assert m["read_options"]["template"] == {"format": FMT, "labels": None, "domains": ["rev"]}
    assert "template" not in open_tokens(cache, "gen", "train").manifest["read_options"]
    rows = {(e["domain"], e["split"]): e for e in s["entries"]}
    assert rows[("rev", "train")]["documents"] == len(train)

    # unchanged: reused; another template: only the templated entries are rebuilt; no template: rebuilt again
    s = build_cache(root, tiny_tokenizer_dir, cache, workers=1, template={"format": FMT, "domains": ["rev"]})
    assert {e["status"] for e in s["entries"]} == {"reused"}
    s = build_cache(root, tiny_tokenizer_dir, cache, workers=1,
                    template={"format": "{text} Verdict: {label}", "domains": ["rev"]})
    assert {(e["domain"], e["status"], e["reason"]) for e in s["entries"]} == {
        ("rev", "built", "template changed"), ("gen", "reused", "unchanged")}
    assert _decoded(tiny_tokenizer, cache, "rev", "train")[0] == f"{train[0]} Verdict: {_label(train[0])}"
    s = build_cache(root, tiny_tokenizer_dir, cache, workers=1)
    assert {(e["domain"], e["reason"]) for e in s["entries"] if e["status"] == "built"} == {
        ("rev", "template changed")}
    assert _decoded(tiny_tokenizer, cache, "rev", "train") == train
    with pytest.raises(UsageError, match="template.domains: unknown domain\\(s\\) law"):
        build_cache(root, tiny_tokenizer_dir, cache, template={"format": FMT, "domains": ["law"]})


def test_missing_label_field_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d" / "train.jsonl", [{"text": "a", "label": "x"}, {"text": "  "},
                                                        {"text": "b", "label": 1}, {"text": "c"},
                                                        {"text": "d", "label": None}, {"text": "e", "label": [1]}])
    src = SplitSource("d", "train", [path])
    with pytest.raises(CptlabError) as e:
        list(iter_documents(src, ReadOptions(template=FMT)))
    assert str(e.value).startswith(f"{path}:4 (document 2 of d/train): template field 'label' not found in its "
                                   f"record")
    stats = ReadStats()
    docs = list(iter_documents(src, ReadOptions(template=FMT, on_bad_record="skip"), stats))
    assert docs == ["a It was x.", "b It was 1."]  # numbers as JSON writes them
    assert stats.skipped == {"empty": 1, "missing_label": 2, "not_a_string": 1} and stats.documents == 2
    assert stats.bytes == len("a It was x.b It was 1.")
    pq = write_parquet(tmp_path / "p" / "train.parquet", {"text": ["a", "b"], "label": ["x", None]})
    with pytest.raises(CptlabError, match=rf"{pq}: row 1 \(document 1 of p/train\): template field 'label'"):
        list(iter_documents(SplitSource("p", "train", [pq]), ReadOptions(template=FMT)))


def test_labels_file_keyed_by_document_index(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    root = tmp_path / "c"
    docs = ["first doc", "second doc", "third doc"]
    write_txt(root / "d" / "train.txt", "first doc\n\n\n\nsecond doc\n\nthird doc\n")
    write_txt(root / "d" / "test.txt", "only doc\n")
    labels = tmp_path / "labels"
    write_txt(labels / "d" / "train.txt", "pos\nneg\npos\n")
    # jsonl keyed by `doc` (any order) with two fields; parquet in row order
    write_jsonl(labels / "d" / "test.jsonl", [{"doc": 0, "label": "neg", "p": 0.25}])
    fmt = "{text} It was {label}."
    cache = tmp_path / "cache"
    build_cache(root, tiny_tokenizer_dir, cache, workers=1, splits=["train"],
                template={"format": fmt, "labels": str(labels / "{domain}" / "{split}.txt")})
    assert _decoded(tiny_tokenizer, cache, "d", "train") == [
        f"{d} It was {lab}." for d, lab in zip(docs, ["pos", "neg", "pos"])]
    m = open_tokens(cache, "d", "train").manifest["read_options"]["template"]
    assert m["labels"] == str((labels / "d" / "train.txt").resolve()) and len(m["labels_sha256"]) == 64
    # the labels file changed: rebuilt with the new labels
    write_txt(labels / "d" / "train.txt", "neg\nneg\nneg\n")
    s = build_cache(root, tiny_tokenizer_dir, cache, workers=1, splits=["train"],
                    template={"format": fmt, "labels": str(labels / "{domain}" / "{split}.txt")})
    assert s["entries"][0]["reason"] == "template changed"
    assert _decoded(tiny_tokenizer, cache, "d", "train")[0] == "first doc It was neg."

    src = SplitSource("d", "test", [root / "d" / "test.txt"])
    opts = ReadOptions(template={"format": "{text} ({label}, p={p})", "labels": str(labels / "d" / "test.jsonl")})
    assert list(iter_documents(src, opts)) == ["only doc (neg, p=0.25)"]
    write_parquet(labels / "t.parquet", {"label": ["a", "b", "c"]})
    train = SplitSource("d", "train", [root / "d" / "train.txt"])
    opts = ReadOptions(template={"format": fmt, "labels": str(labels / "t.parquet")})
    assert list(iter_documents(train, opts)) == [f"{d} It was {x}." for d, x in zip(docs, "abc")]
    # more labels than documents, a missing row, a missing file
    with pytest.raises(CptlabError, match=r"t.parquet: has rows for document\(s\) 1..2, but d/test has only 1"):
        list(iter_documents(src, opts))
    write_jsonl(labels / "gap.jsonl", [{"doc": 0, "label": "x"}, {"doc": 2, "label": "y"}])
    opts = ReadOptions(template={"format": fmt, "labels": str(labels / "gap.jsonl")})
    with pytest.raises(CptlabError, match=r"train.txt:5 \(document 1 of d/train\): template field 'label' not found "
                                          r"in its record or the labels file .*gap.jsonl"):
        list(iter_documents(train, opts))
    write_jsonl(labels / "dup.jsonl", [{"doc": 0, "label": "x"}, {"doc": 0, "label": "y"}])
    with pytest.raises(CptlabError, match=r"dup.jsonl:2: a second row for document 0"):
        list(iter_documents(train, ReadOptions(template={"format": fmt, "labels": str(labels / "dup.jsonl")})))
    with pytest.raises(CptlabError, match=r"template.labels: .*nope.txt: no such file"):
        build_cache(root, tiny_tokenizer_dir, cache, workers=1, template={"format": fmt, "labels": "nope.txt"})


def test_prepare_cli_template(tmp_path, labelled, tiny_tokenizer_dir, tiny_tokenizer, capsys):
    root, train, _, _ = labelled
    cache = tmp_path / "cache"
    code, out, _ = run_cli(["prepare", "--corpus", str(root), "--tokenizer", str(tiny_tokenizer_dir), "--out",
                            str(cache), "--splits", "train", "--template", FMT, "--template-domains", "rev",
                            "--json", "--quiet"], capsys)
    assert code == 0 and json.loads(out)["entries"][1]["domain"] == "rev"
    assert _decoded(tiny_tokenizer, cache, "rev", "train")[5] == f"{train[5]} It was {_label(train[5])}."
    code, out, err = run_cli(["prepare", "--corpus", str(root), "--tokenizer", str(tiny_tokenizer_dir), "--out",
                              str(cache), "--template", FMT], capsys)  # gen/train.txt has no labels
    assert code == 1 and "Traceback" not in out + err
    assert "train.txt:1(document0ofgen/train):templatefield'label'notfound" in "".join((out + err).split())
    code, _, err = run_cli(["prepare", "--corpus", str(root), "--tokenizer", str(tiny_tokenizer_dir), "--out",
                            str(cache), "--template-labels", "x.txt"], capsys)
    assert code == 2 and "give --template too" in err


@pytest.mark.parametrize("template", [FMT, {"format": FMT, "domains": ["rev"]}])
def test_cpt_run_trains_on_templated_text(tmp_path, labelled, tiny_tokenizer_dir, tiny_tokenizer, template):
    """A short llama-micro CPT run with `data.template`: its cache holds the templated documents, and it trains."""
    from cptlab.train import run

    root, train, _, _ = labelled
    out = tmp_path / "run"
    cfg = {"model": {"name": "llama-micro"}, "tokenizer": str(tiny_tokenizer_dir),
           "data": {"corpus": str(root), "sources": {"rev": 1.0}, "seq_len": 32, "template": template},
           "batch_size": 4, "max_steps": 3, "out_dir": str(out), "seed": 0, "tensorboard": False, "quiet": True,
           "eval": {"at_end": False}, "checkpoint": {"at_end": False}}
    result = run(cfg)
    assert result.steps == 3 and math.isfinite(result.last_loss)
    cache = out / "tokens"
    assert _decoded(tiny_tokenizer, cache, "rev", "train") == [f"{d} It was {_label(d)}." for d in train]
    assert open_tokens(cache, "rev", "train").manifest["read_options"]["template"]["format"] == FMT
    # every trained token comes from the templated cache: the sampler's windows are slices of it
    from cptlab.tokens.mixture import MixtureSampler

    s = MixtureSampler.from_caches(cache, {"rev": 1.0}, seq_len=32, seed=0)
    text = tiny_tokenizer.decode(s.next_batch(64).input_ids.flatten().tolist())
    assert text.count("It was short.<|endoftext|>") + text.count("It was long.<|endoftext|>") >= 5
