"""Nearest-mean probe (NMC): did continued pretraining make a labelled task easier to read off the representations?

Each text is encoded by the frozen model; its feature is the attention-masked mean over tokens of the hidden
states of one layer (`layer`: an index into `hidden_states`, 0 = embeddings, -1 = the last layer's output as
transformers returns it, i.e. after the final norm for Llama/GPT-2). On the train part, one mean feature per
class; each test text is assigned the class whose mean is nearest (euclidean, the default: smallest L2 distance;
cosine: largest cosine similarity). The accuracy on the test part is the probe's score; run it before and after CPT.

Data: JSON lines with a text field and a label field (any JSON scalar; compared as strings), and optionally a
split field (`train` or `test`) that fixes the split. Without it, a seeded stratified split puts
`round(test_fraction · n_c)` texts of each class c in the test part (at least one per class stays in train).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cptlab.errors import CptlabError, UsageError

METRICS = ("cosine", "euclidean")


@dataclass
class LabelledData:
    texts: list[str]
    labels: list[str]
    splits: list[str] | None  # "train"/"test" per record when the file has a split field
    lines: list[int]  # 1-based line number of each record (for messages)


@dataclass
class ProbeResult:
    accuracy: float
    n_train: int
    n_test: int
    metric: str
    classes: list[str]
    per_class_accuracy: dict[str, float | None]
    predictions: list[str] = field(repr=False)
    settings: dict = field(default_factory=dict)

    def to_dict(self, predictions: bool = False) -> dict:
        d = asdict(self)
        if not predictions:
            d.pop("predictions")
        return d


def load_labelled(path: str | Path, text_field: str = "text", label_field: str = "label",
                  split_field: str | None = "split") -> LabelledData:
    """Read labelled JSON lines; any bad record is an error naming file:line. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise CptlabError(f"{path}: file not found")
    texts, labels, splits, lines = [], [], [], []
    has_split = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise CptlabError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(rec, dict):
                raise CptlabError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            text = rec.get(text_field)
            if not isinstance(text, str):
                raise CptlabError(f"{where}: field {text_field!r} is missing or not a string")
            if not text.strip():
                raise CptlabError(f"{where}: field {text_field!r} is empty")
            if label_field not in rec or rec[label_field] is None or isinstance(rec[label_field], (dict, list)):
                raise CptlabError(f"{where}: field {label_field!r} is missing or not a scalar label")
            this_has_split = bool(split_field) and split_field in rec
            if has_split is None:
                has_split = this_has_split
            elif has_split != this_has_split:
                raise CptlabError(f"{where}: field {split_field!r} is {'present' if this_has_split else 'missing'} "
                                  f"here but not on the first record; give it on every record or on none")
            if this_has_split:
                s = str(rec[split_field]).lower()
                s = {"validation": "test", "valid": "test", "eval": "test"}.get(s, s)
                if s not in ("train", "test"):
                    raise CptlabError(f"{where}: field {split_field!r} is {rec[split_field]!r}; "
                                      f"expected 'train' or 'test'")
                splits.append(s)
            texts.append(text)
            labels.append(str(rec[label_field]))
            lines.append(lineno)
    if not texts:
        raise CptlabError(f"{path}: no records")
    return LabelledData(texts, labels, splits if has_split else None, lines)


def split_indices(labels: list[str], test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: (train indices, test indices), each sorted. Same labels + seed -> same split."""
    if not 0.0 < test_fraction < 1.0:
        raise UsageError(f"--test-fraction {test_fraction}: must be in (0, 1)")
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    train, test = [], []
    for c in sorted(set(labels)):
        idx = np.flatnonzero(labels_arr == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = min(int(round(test_fraction * len(idx))), len(idx) - 1)
        test.extend(idx[:n_test].tolist())
        train.extend(idx[n_test:].tolist())
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(test), dtype=np.int64)


def nearest_mean_probe(features, labels, train_idx, test_idx, metric: str = "euclidean") -> ProbeResult:
    """Class means of `features[train_idx]`; accuracy of the nearest mean on `features[test_idx]`.

    A test example whose class has no train example counts as wrong. Ties go to the class first in sorted order.
    """
    if metric not in METRICS:
        raise UsageError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray([str(v) for v in labels])
    train_idx = np.asarray(train_idx, dtype=np.int64)
    test_idx = np.asarray(test_idx, dtype=np.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise CptlabError(f"probe: features of shape {x.shape} do not match {len(y)} labels")
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise CptlabError(f"probe: {len(train_idx)} train and {len(test_idx)} test examples; both must be > 0")
    classes = sorted(set(y[train_idx].tolist()))
    means = np.stack([x[train_idx][y[train_idx] == c].mean(axis=0) for c in classes])
    xt = x[test_idx]
    if metric == "cosine":
        def unit(a):
            n = np.linalg.norm(a, axis=1, keepdims=True)
            return a / np.where(n > 0, n, 1.0)
        scores = unit(xt) @ unit(means).T
    else:
        # -||x - m||² without the [n_test, classes, hidden] difference tensor (||x||² is the same for every class).
        scores = 2 * (xt @ means.T) - (means ** 2).sum(1)[None, :]
    pred = np.asarray(classes)[scores.argmax(axis=1)]
    truth = y[test_idx]
    correct = pred == truth
    per_class = {}
    for c in sorted(set(y.tolist())):
        m = truth == c
        per_class[c] = float(correct[m].mean()) if m.any() else None
    return ProbeResult(accuracy=float(correct.mean()), n_train=int(len(train_idx)), n_test=int(len(test_idx)),
                       metric=metric, classes=sorted(set(y.tolist())), per_class_accuracy=per_class,
                       predictions=pred.tolist())


def extract_features(model, tokenizer, texts: list[str], layer: int = -1, batch_size: int = 16,
                     max_length: int | None = None, device=None) -> np.ndarray:
    """Mean-pooled hidden states [n_texts, hidden] of `layer`, masked by the attention mask, in float32.

    Texts longer than `max_length` tokens (default: the model's context) are truncated.
    """
    import torch

    if device is None:
        device = next(model.parameters()).device
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions",
                                                                                       1024)
    n_hidden = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    if n_hidden is not None and not -(n_hidden + 1) <= layer <= n_hidden:
        raise UsageError(f"--layer {layer}: the model has {n_hidden} layers; hidden states are indexed "
                         f"{-(n_hidden + 1)}..{n_hidden} (0 = embeddings, -1 = last)")
    was_training = model.training
    model.eval()
    # Right padding: real tokens keep their positions (left padding would shift them in models that number
    # positions from the start of the row), and the causal mask keeps pads from touching them.
    padding_side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers: any id will do, the attention mask hides pads
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise CptlabError("probe: the tokenizer has no pad, eos or unk token to pad batches with")
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = texts[start:start + batch_size]
                enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
                enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                hs = model(**enc, output_hidden_states=True).hidden_states[layer].float()
                mask = enc["attention_mask"].to(hs.dtype).unsqueeze(-1)
                counts = mask.sum(1)
                if (counts == 0).any():
                    i = start + int((counts.squeeze(-1) == 0).nonzero()[0])
                    raise CptlabError(f"text {i}: no tokens after tokenisation")
                out.append(((hs * mask).sum(1) / counts).cpu().numpy())
    finally:
        model.train(was_training)
        tokenizer.padding_side = padding_side
        tokenizer.pad_token = pad_token
    return np.concatenate(out, axis=0)


def probe(model_dir: str | Path, data: str | Path, text_field: str = "text", label_field: str = "label",
          split_field: str | None = "split", test_fraction: float = 0.3, layer: int = -1, seed: int = 0,
          metric: str = "euclidean", batch_size: int = 16, max_length: int | None = None,
          precision: str = "fp32") -> ProbeResult:
    """Load the model and data, extract features, run the nearest-mean probe. The whole `cptlab probe` command."""
    from cptlab.console import log
    from cptlab.model import load_model_and_tokenizer

    if metric not in METRICS:
        raise UsageError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    ds = load_labelled(data, text_field, label_field, split_field)
    if ds.splits is not None:
        train_idx = np.array([i for i, s in enumerate(ds.splits) if s == "train"], dtype=np.int64)
        test_idx = np.array([i for i, s in enumerate(ds.splits) if s == "test"], dtype=np.int64)
        if len(train_idx) == 0 or len(test_idx) == 0:
            raise CptlabError(f"{data}: field {split_field!r} gives {len(train_idx)} train and {len(test_idx)} "
                              f"test records; both parts must be non-empty")
        split_how = f"field {split_field!r}"
    else:
        if len(set(ds.labels)) < 2:
            raise CptlabError(f"{data}: only one label ({ds.labels[0]!r}); a probe needs at least two classes")
        train_idx, test_idx = split_indices(ds.labels, test_fraction, seed)
        if len(test_idx) == 0:
            raise CptlabError(f"{data}: {len(ds.texts)} records leave no test examples at --test-fraction "
                              f"{test_fraction}; add records or raise the fraction")
        split_how = f"seeded stratified split (test fraction {test_fraction}, seed {seed})"
    model, tok = load_model_and_tokenizer(model_dir, dtype=precision)
    log(f"probe: {len(ds.texts)} texts, {len(set(ds.labels))} classes, layer {layer}")
    feats = extract_features(model, tok, ds.texts, layer=layer, batch_size=batch_size, max_length=max_length)
    result = nearest_mean_probe(feats, ds.labels, train_idx, test_idx, metric=metric)
    result.settings = {"model": str(model_dir), "data": str(data), "layer": layer, "metric": metric,
                       "split": split_how, "seed": seed, "test_fraction": test_fraction,
                       "hidden_size": int(feats.shape[1])}
    return result
