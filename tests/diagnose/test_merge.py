"""Model merging: each method against its definition, against mergekit, streaming memory, errors, the CLI."""

from __future__ import annotations

import json
import math
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cptlab.diagnose import merge as merge_mod
from cptlab.diagnose.merge import merge_models, slerp_tensor, ties_tensor, trim_top_magnitude
from cptlab.errors import CptlabError, UsageError

VOCAB = 64


def _llama(seed: int, vocab: int = VOCAB):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def _save(model, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base and two 'fine-tuned' models (base + small different perturbations), as HF dirs."""
    root = tmp_path_factory.mktemp("merge-models")
    base = _llama(0)
    out = {"base": _save(base, root / "base")}
    for i, name in enumerate(("a", "b")):
        m = _llama(0)
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        out[name] = _save(m, root / name)
    (out["a"] / "tokenizer_config.json").write_text("{}")  # a side file the output must carry
    return out


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


def _fake_model(path: Path, tensors: dict, model_type: str = "llama") -> Path:
    """A minimal HF-like dir: config + safetensors (enough for the merge, which never builds the model)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type,
                                                  "architectures": [f"{model_type.title()}ForCausalLM"]}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Linear

def test_linear_merge_is_the_exact_average_and_loads(models, tmp_path):
    out = tmp_path / "avg"
    res = merge_models([models["a"], models["b"]], "linear", out, weights=[0.5, 0.5])
    a, b, m = _tensors(models["a"]), _tensors(models["b"]), _tensors(out)
    assert sorted(m) == sorted(a) and res.tensors == len(a)
    for k in a:
        assert torch.equal(m[k], (a[k] + b[k]) / 2), k
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "merge.json").read_text())["weights"] == [0.5, 0.5]
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(loaded.model.embed_tokens.weight, m["model.embed_tokens.weight"])
    # Default weights are 1/k each: the same average.
    merge_models([models["a"], models["b"]], "linear", tmp_path / "default")
    assert all(torch.allclose(_tensors(tmp_path / "default")[k], m[k], atol=0, rtol=1e-7) for k in m)


def test_linear_weights_are_not_renormalised(models, tmp_path):
    merge_models([models["a"], models["b"]], "linear", tmp_path / "sum", weights=[1.0, 1.0])
    a, b, m = _tensors(models["a"]), _tensors(models["b"]), _tensors(tmp_path / "sum")
    for k in a:
        assert torch.allclose(m[k], a[k] + b[k], atol=1e-7), k


def _mergekit(conf: dict, out: Path) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate(conf), str(out),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    return _tensors(out)


@pytest.mark.parametrize("method", ["linear", "task-arithmetic", "ties", "slerp"])
def test_agrees_with_mergekit(models, tmp_path, method):
    pytest.importorskip("mergekit")
    a, b, base = str(models["a"]), str(models["b"]), str(models["base"])
    if method == "linear":
        conf = {"merge_method": "linear", "dtype": "float32", "parameters": {"normalize": False},
                "models": [{"model": a, "parameters": {"weight": 0.3}}, {"model": b, "parameters": {"weight": 0.9}}]}
        merge_models([a, b], "linear", tmp_path / "ours", weights=[0.3, 0.9])
    elif method in ("task-arithmetic", "ties"):
        params = {"weight": 0.7} if method == "task-arithmetic" else {"weight": 0.7, "density": 0.4}
        conf = {"merge_method": method.replace("-", "_"), "dtype": "float32", "base_model": base,
                "models": [{"model": base}, {"model": a, "parameters": params},
                           {"model": b, "parameters": {**params, "weight": 1.2}}]}
        merge_models([a, b], method, tmp_path / "ours", base=base, weights=[0.7, 1.2], density=0.4)
    else:
        conf = {"merge_method": "slerp", "dtype": "float32", "base_model": a, "parameters": {"t": 0.3},
                "models": [{"model": a}, {"model": b}]}
        merge_models([a, b], "slerp", tmp_path / "ours", t=0.3)
    theirs = _mergekit(conf, tmp_path / "mergekit")
    ours = _tensors(tmp_path / "ours")
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        assert torch.allclose(ours[k], theirs[k], atol=1e-6, rtol=1e-5), (k, (ours[k] - theirs[k]).abs().max())


# ---------------------------------------------------------------------------------------------------------------
# SLERP, task arithmetic, TIES

def test_slerp_ends_and_definition(models, tmp_path):
    a, b = _tensors(models["a"]), _tensors(models["b"])
    for t, end in ((0.0, a), (1.0, b)):
        out = tmp_path / f"t{t}"
        merge_models([models["a"], models["b"]], "slerp", out, t=t)
        m = _tensors(out)
        assert all(torch.equal(m[k], end[k]) for k in end)
    # Orthogonal unit vectors: the midpoint lies on the circle at 45 degrees.
    mid = slerp_tensor(0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-7)
    # Different norms: coefficients sin((1-t)Ω)/sin Ω, sin(tΩ)/sin Ω on the raw vectors (Ω = 60 degrees here).
    v0, v1 = torch.tensor([2.0, 0.0]), torch.tensor([0.5, math.sqrt(3) / 2])
    t, om = 0.25, math.pi / 3
    expect = (math.sin((1 - t) * om) * v0 + math.sin(t * om) * v1) / math.sin(om)
    assert torch.allclose(slerp_tensor(t, v0, v1), expect, atol=1e-6)
    # Colinear tensors fall back to linear interpolation.
    assert torch.allclose(slerp_tensor(0.25, torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])),
                          torch.tensor([1.5, 3.0]))


def test_task_arithmetic_definition(models, tmp_path):
    merge_models([models["a"], models["b"]], "task-arithmetic", tmp_path / "ta", base=models["base"],
                 weights=[0.5, 2.0])
    a, b, base, m = (_tensors(models["a"]), _tensors(models["b"]), _tensors(models["base"]),
                     _tensors(tmp_path / "ta"))
    for k in a:
        assert torch.allclose(m[k], base[k] + 0.5 * (a[k] - base[k]) + 2.0 * (b[k] - base[k]), atol=1e-6), k


def test_trim_keeps_largest_magnitudes():
    d = torch.tensor([0.1, -3.0, 2.0, -0.5, 0.05, 1.0])
    assert trim_top_magnitude(d, 0.5).tolist() == [0.0, -3.0, 2.0, 0.0, 0.0, 1.0]
    assert trim_top_magnitude(d, 0.1).tolist() == [0.0, -3.0, 0.0, 0.0, 0.0, 0.0]  # at least one kept
    assert torch.equal(trim_top_magnitude(d, 1.0), d)


TIES_BASE = torch.tensor([1.0, 1.0, 1.0, 1.0])
TIES_M1 = TIES_BASE + torch.tensor([3.0, -1.0, 0.5, -2.0])   # trimmed to density 0.5: [3, 0, 0, -2]
TIES_M2 = TIES_BASE + torch.tensor([-1.5, 2.0, 1.0, -0.2])   # trimmed: [-1.5, 2, 0, 0]


@pytest.mark.parametrize("weights, expected_delta", [
    # sum [1.5, 2, 0, -2] -> signs [+, +, +, -]; agreeing entries averaged; nobody agrees at 2 -> base.
    ([1.0, 1.0], [3.0, 2.0, 0.0, -2.0]),
    # weighted deltas [3, 0, 0, -2] and [-4.5, 6, 0, 0]: sum [-1.5, 6, 0, -2] -> signs [-, +, +, -];
    # entry 0: -4.5 / 3; entry 1: 6 / 3; entry 3: -2 / 1.
    ([1.0, 3.0], [-1.5, 2.0, 0.0, -2.0]),
])
def test_ties_follows_its_definition(tmp_path, weights, expected_delta):
    expected = TIES_BASE + torch.tensor(expected_delta)
    got = ties_tensor(TIES_BASE, [TIES_M1, TIES_M2], weights, [0.5, 0.5])
    assert torch.allclose(got, expected, atol=1e-7)
    # The streaming path over files computes the same.
    paths = [_fake_model(tmp_path / n, {"w": t}) for n, t in (("base", TIES_BASE), ("m1", TIES_M1),
                                                                ("m2", TIES_M2))]
    merge_models(paths[1:], "ties", tmp_path / "out", base=paths[0], weights=weights, density=0.5)
    assert torch.allclose(_tensors(tmp_path / "out")["w"], expected, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# Streaming, sharding, adapters

def test_never_more_than_two_input_tensors_alive(models, tmp_path, monkeypatch):
    alive = {"now": 0, "max": 0}
    real_get = merge_mod._Reader.get

    def counting_get(self, key):
        t = real_get(self, key)
        alive["now"] += 1
        alive["max"] = max(alive["max"], alive["now"])
        weakref.finalize(t, lambda: alive.__setitem__("now", alive["now"] - 1))
        return t

    monkeypatch.setattr(merge_mod._Reader, "get", counting_get)
    three = [models["a"], models["b"], models["base"]]
    merge_models(three, "linear", tmp_path / "lin", weights=[0.2, 0.3, 0.5])
    merge_models(three[:2], "ties", tmp_path / "ties", base=models["base"])
    merge_models(three[:2], "task-arithmetic", tmp_path / "ta", base=models["base"])
    assert 1 <= alive["max"] <= 2


def test_small_shards_write_an_hf_index(models, tmp_path):
    merge_models([models["a"], models["b"]], "linear", tmp_path / "one")
    res = merge_models([models["a"], models["b"]], "linear", tmp_path / "many", shard_bytes=20_000)
    assert res.shards > 1
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == res.shards
    one, many = _tensors(tmp_path / "one"), _tensors(tmp_path / "many")
    assert sorted(one) == sorted(many) and all(torch.equal(one[k], many[k]) for k in one)
    from transformers import AutoModelForCausalLM

    x = torch.tensor([[1, 2, 3]])
    lo = AutoModelForCausalLM.from_pretrained(tmp_path / "one")(x).logits
    hi = AutoModelForCausalLM.from_pretrained(tmp_path / "many")(x).logits
    assert torch.equal(lo, hi)


def test_lora_adapter_is_merged_first(models, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(models["base"]),
                                LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # B starts at zero; make the adapter do something
    peft_model.save_pretrained(tmp_path / "adapter")
    merged_ref = peft_model.merge_and_unload()
    expected = {k: v.detach() for k, v in merged_ref.state_dict().items()}
    res = merge_models([tmp_path / "adapter", models["b"]], "linear", tmp_path / "out", weights=[0.5, 0.5])
    assert res.notes and "LoRA adapter" in res.notes[0]
    b, m = _tensors(models["b"]), _tensors(tmp_path / "out")
    k = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(expected[k], _tensors(models["base"])[k])
    for k in b:
        assert torch.allclose(m[k], 0.5 * expected[k] + 0.5 * b[k], atol=1e-6), k


# ---------------------------------------------------------------------------------------------------------------
# Errors

def test_shape_mismatch_is_a_clear_error(models, tmp_path):
    other = _save(_llama(0, vocab=VOCAB + 8), tmp_path / "bigger-vocab")
    with pytest.raises(CptlabError, match=r"tensor model\.embed_tokens\.weight: shape \[64, 16\] in .* but \[72, 16\]"):
        merge_models([models["a"], other], "linear", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_architecture_mismatch_is_a_clear_error(tmp_path):
    a = _fake_model(tmp_path / "llama", {"w": torch.zeros(2)}, "llama")
    g = _fake_model(tmp_path / "gpt2", {"w": torch.zeros(2)}, "gpt2")
    with pytest.raises(CptlabError, match="differ in architecture: config model_type is 'llama' vs 'gpt2'"):
        merge_models([a, g], "linear", tmp_path / "out")
    c = _fake_model(tmp_path / "other-names", {"v": torch.zeros(2)}, "llama")
    with pytest.raises(CptlabError, match="different tensors: tensor w is in"):
        merge_models([a, c], "linear", tmp_path / "out")


@pytest.mark.parametrize("kwargs, exc, msg", [
    ({"method": "ties"}, UsageError, "needs --base"),
    ({"method": "task-arithmetic"}, UsageError, "needs --base"),
    ({"method": "linear", "weights": [0.5]}, UsageError, "1 values for 2 models"),
    ({"method": "slerp", "t": 1.5}, UsageError, "--t 1.5"),
    ({"method": "merge-all"}, UsageError, "--method 'merge-all'"),
    ({"method": "linear", "base": "x"}, UsageError, "does not use --base"),
])
def test_bad_arguments(models, tmp_path, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        merge_models([models["a"], models["b"]], out_dir=tmp_path / "out", **kwargs)


def test_missing_and_non_safetensors_models(models, tmp_path):
    with pytest.raises(CptlabError, match="directory not found"):
        merge_models([models["a"], tmp_path / "nope"], "linear", tmp_path / "out")
    binary = tmp_path / "bin-model"
    binary.mkdir()
    (binary / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (binary / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CptlabError, match="only PyTorch .bin weights"):
        merge_models([models["a"], binary], "linear", tmp_path / "out")


def test_cli_merge_and_exit_codes(models, tmp_path, capsys):
    from cptlab.cli import main

    out = tmp_path / "cli-out"
    with pytest.raises(SystemExit) as e:
        main(["merge", "--model", str(models["a"]), "--model", str(models["b"]), "--method", "linear",
              "--weights", "0.25,0.75", "--out", str(out), "--json"])
    assert e.value.code == 0
    assert json.loads(capsys.readouterr().out)["weights"] == [0.25, 0.75]
    a, b, m = _tensors(models["a"]), _tensors(models["b"]), _tensors(out)
    assert all(torch.allclose(m[k], 0.25 * a[k] + 0.75 * b[k], atol=1e-7) for k in a)
    # An existing output is not replaced without --force.
    with pytest.raises(SystemExit) as e:
        main(["merge", "--model", str(models["a"]), "--model", str(models["b"]), "--method", "linear",
              "--out", str(out)])
    assert e.value.code == 1
    with pytest.raises(SystemExit) as e:
        main(["merge", "--model", str(models["a"]), "--model", str(models["b"]), "--method", "ties",
              "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["merge", "--model", str(models["a"]), "--model", str(models["b"]), "--method", "linear",
              "--weights", "0.5,abc", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
