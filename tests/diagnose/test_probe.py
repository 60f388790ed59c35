"""Nearest-class-mean probe: the classifier on known features, the split, padding-masked pooling, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cptlab.diagnose.probe import extract_features, load_labelled, nearest_mean_probe, split_indices
from cptlab.errors import CptlabError, UsageError


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_separable_classes_give_accuracy_one(metric):
    rng = np.random.default_rng(0)
    centers = np.eye(3, 8) * 10 + 1  # distinct directions too, so cosine separates them as well
    labels = np.repeat(["a", "b", "c"], 30)
    feats = centers[np.repeat(np.arange(3), 30)] + rng.normal(0, 0.3, (90, 8))
    train, test = split_indices(labels.tolist(), 0.3, seed=0)
    res = nearest_mean_probe(feats, labels, train, test, metric=metric)
    assert res.accuracy == 1.0 and res.n_test == 27 and res.n_train == 63
    assert res.per_class_accuracy == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_nearest_mean_decision_matches_hand_computation():
    # 1-D: class means 0 (x) and 10 (y); test points 4 -> x, 6 -> y, 5.5 -> y; 9 labelled x is wrong.
    feats = np.array([[-1.0], [1.0], [9.0], [11.0], [4.0], [6.0], [5.5], [9.0]])
    labels = ["x", "x", "y", "y", "x", "y", "y", "x"]
    res = nearest_mean_probe(feats, labels, [0, 1, 2, 3], [4, 5, 6, 7], metric="euclidean")
    assert res.predictions == ["x", "y", "y", "y"]
    assert res.accuracy == 0.75 and res.per_class_accuracy == {"x": 0.5, "y": 1.0}
    # Cosine ignores the length: in 2-D, means along (1,0) and (0,1); (5, 1) is nearer in angle to (1,0).
    f2 = np.array([[2.0, 0.0], [0.0, 2.0], [5.0, 1.0], [0.1, 3.0]])
    res = nearest_mean_probe(f2, ["p", "q", "p", "q"], [0, 1], [2, 3], metric="cosine")
    assert res.predictions == ["p", "q"] and res.accuracy == 1.0


def test_split_is_seeded_and_stratified():
    labels = ["a"] * 10 + ["b"] * 20
    s1, s2 = split_indices(labels, 0.3, seed=3), split_indices(labels, 0.3, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(s1, s2))
    train, test = s1
    assert sorted(train.tolist() + test.tolist()) == list(range(30))
    assert sum(labels[i] == "a" for i in test) == 3 and sum(labels[i] == "b" for i in test) == 6
    assert not np.array_equal(split_indices(labels, 0.3, seed=4)[1], test)
    with pytest.raises(UsageError, match="--test-fraction"):
        split_indices(labels, 1.0)


def test_load_labelled_errors_name_the_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a b", "label": 1}\n\n{"text": "c", "label": 2\n')
    with pytest.raises(CptlabError, match=r"d\.jsonl:3: not valid JSON"):
        load_labelled(f)
    f.write_text('{"text": "a b", "label": 1}\n{"text": "c"}\n')
    with pytest.raises(CptlabError, match=r"d\.jsonl:2: field 'label' is missing"):
        load_labelled(f)
    f.write_text('{"body": "a b", "y": 1}\n{"body": "c", "y": "2"}\n')
    ds = load_labelled(f, text_field="body", label_field="y")
    assert ds.texts == ["a b", "c"] and ds.labels == ["1", "2"] and ds.splits is None


def test_pooling_masks_padding(tiny_model_dir):
    from cptlab.model import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_model_dir)
    texts = ["def f(x):", "return the value of a long expression, padded against nothing at all " * 3]
    alone = extract_features(model, tok, texts[:1], batch_size=1)
    batched = extract_features(model, tok, texts, batch_size=2)  # the first text is padded here
    assert np.allclose(alone[0], batched[0], atol=1e-5)
    # The mean over the real tokens of the last hidden state, computed independently.
    ids = tok(texts[0], return_tensors="pt")
    with torch.no_grad():
        hs = model(**ids, output_hidden_states=True).hidden_states[-1][0]
    assert np.allclose(alone[0], hs.mean(0).numpy(), atol=1e-5)
    first = extract_features(model, tok, texts[:1], layer=0)
    assert not np.allclose(first, alone)
    # --layer picks hidden_states[layer] (0: embeddings; 1: after the first block), pooled the same way.
    with torch.no_grad():
        all_hs = model(**ids, output_hidden_states=True).hidden_states
    assert np.allclose(first[0], all_hs[0][0].mean(0).numpy(), atol=1e-6)
    middle = extract_features(model, tok, texts[:1], layer=1)
    assert np.allclose(middle[0], all_hs[1][0].mean(0).numpy(), atol=1e-5)
    assert not np.allclose(middle, first) and not np.allclose(middle, alone)
    with pytest.raises(UsageError, match="--layer 7"):
        extract_features(model, tok, texts[:1], layer=7)


def _write_labelled(path, corpus_docs, n=24):
    with open(path, "w", encoding="utf-8") as f:
        for label in ("code", "prose"):
            for doc in corpus_docs[label][:n]:
                f.write(json.dumps({"text": doc[:300], "label": label}) + "\n")
    return path


def test_cli_probe_json_and_reproducible(tiny_model_dir, corpus_docs, tmp_path, capsys):
    from cptlab.cli import main

    data = _write_labelled(tmp_path / "labelled.jsonl", corpus_docs)
    outs = []
    for i, seed in enumerate((0, 0, 1)):
        out = tmp_path / f"probe{i}.json"
        with pytest.raises(SystemExit) as e:
            main(["probe", "--model", str(tiny_model_dir), "--data", str(data), "--seed", str(seed),
                  "--json", str(out)])
        assert e.value.code == 0
        outs.append(json.loads(out.read_text()))
    assert "nearest-mean probe: accuracy" in capsys.readouterr().out
    assert outs[0] == outs[1]
    assert outs[0]["n_test"] == 2 * round(0.3 * 24) and 0.0 <= outs[0]["accuracy"] <= 1.0
    assert outs[0]["settings"]["split"] != outs[2]["settings"]["split"]
    with pytest.raises(SystemExit) as e:
        main(["probe", "--model", str(tiny_model_dir), "--data", str(tmp_path / "missing.jsonl")])
    assert e.value.code == 1
