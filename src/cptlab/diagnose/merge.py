"""Merge HF checkpoints of one architecture, tensor by tensor, streaming from safetensors.

Methods (the definitions follow mergekit 0.1.5, so that `cptlab merge` and mergekit agree on the same inputs):

* **linear**: ``Σ_i w_i · θ_i``. The weights are used **as given, not renormalised**: ``0.3,0.7`` is an average,
  ``1,1`` is a sum. Without ``--weights`` every model gets ``1/k`` (the plain average).
* **task-arithmetic** (Ilharco et al. 2023): ``θ_base + Σ_i w_i · (θ_i − θ_base)``; weights default to 1.
* **slerp**: spherical interpolation between exactly two models, ``t = 0`` gives the first, ``t = 1`` the second.
  Each tensor is flattened to one vector; the angle is taken between the normalised vectors and the
  coefficients ``sin((1−t)Ω)/sin Ω`` and ``sin(tΩ)/sin Ω`` are applied to the raw tensors. Nearly colinear (or
  antiparallel) tensors, ``|cos Ω| > 0.9995``, fall back to linear interpolation, as in mergekit.
* **ties** (Yadav et al. 2023): task vectors ``δ_i = θ_i − θ_base``; *trim*: keep the ``max(1, ⌊density·n⌋)``
  entries of largest magnitude of each ``δ_i`` (the rest become 0); *weight*: ``δ_i ← w_i·δ_i``; *elect*: the sign
  of ``Σ_i δ_i`` per entry (the sign carrying more total magnitude; 0 counts as +); *disjoint mean*:
  ``θ = θ_base + Σ_i δ_i·[sign δ_i = elected] / Σ_i w_i·[sign δ_i = elected]`` (entries no model agrees on keep
  the base value). Weights default to 1, density to 0.5.

Memory: every input is opened with ``safetensors.safe_open`` (memory-mapped, nothing read up front) and the merge
walks the tensor names one at a time. For one name, at most two input tensors are materialised at once — the
current model's and, for task-arithmetic/TIES, the base's — plus float32 work buffers of that one tensor's size
(an accumulator; for TIES also the elected sign and the divisor). TIES makes two passes over the models per
tensor (first to elect the sign, then to average the agreeing entries), re-reading each model's tensor instead of
holding the k task vectors at once, so memory does not grow with the number of models. Merged tensors are
collected until ``shard_bytes`` and written as a safetensors shard, so the output is not held whole either.

Inputs are HF model dirs with ``model.safetensors`` or a sharded ``model.safetensors.index.json``. A LoRA adapter
dir (``adapter_config.json`` present) is first merged into its base model (from the adapter config's
``base_model_name_or_path``, or ``--base`` when that is missing) with peft and saved to a temporary dir.
The output dir gets the config, generation config and tokenizer files of the first model, the merged safetensors,
and ``merge.json`` (the recipe: method, models, weights, density, t).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cptlab.errors import CptlabError, UsageError
from cptlab.fsutil import atomic_dir

METHODS = ("linear", "task-arithmetic", "slerp", "ties")
NEEDS_BASE = ("task-arithmetic", "ties")
SLERP_DOT_THRESHOLD = 0.9995
SLERP_EPS = 1e-8
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
DEFAULT_SHARD_BYTES = 4 * 1024**3
# safetensors dtype names -> torch dtype names (floating point only: those are merged; others are copied).
FLOAT_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass
class MergeResult:
    out_dir: str
    method: str
    models: list[str]
    base: str | None
    weights: list[float] | None
    density: float | None
    t: float | None
    tensors: int
    shards: int
    bytes: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# The per-tensor math (pure functions on torch tensors; tested directly).

def _work_dtype(t):
    import torch

    return torch.float64 if t.dtype == torch.float64 else torch.float32


def linear_tensor(tensors, weights):
    """Σ w_i t_i in float32 (float64 for float64 inputs); weights as given."""
    import torch

    out = torch.zeros(tensors[0].shape, dtype=_work_dtype(tensors[0]))
    for t, w in zip(tensors, weights):
        out.add_(t.to(out.dtype), alpha=float(w))
    return out


def slerp_tensor(t: float, v0, v1, dot_threshold: float = SLERP_DOT_THRESHOLD, eps: float = SLERP_EPS):
    """Spherical interpolation of two same-shaped tensors, each seen as one flat vector (mergekit's definition)."""
    import math

    import torch

    dtype = _work_dtype(v0)
    a = v0.reshape(-1).to(dtype)
    b = v1.reshape(-1).to(dtype)
    if a.numel() == 0:
        return ((1 - t) * a + t * b).reshape(v0.shape)
    na = torch.linalg.vector_norm(a)
    nb = torch.linalg.vector_norm(b)
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = float(((a / na) * (b / nb)).sum().clamp(-1, 1))
    if abs(dot) > dot_threshold:
        ca, cb = 1 - t, t
    else:
        theta = math.acos(dot)
        s = math.sin(theta)
        ca, cb = math.sin((1 - t) * theta) / s, math.sin(t * theta) / s
    return (ca * a + cb * b).reshape(v0.shape)


def trim_top_magnitude(delta, density: float):
    """Keep the max(1, ⌊density·n⌋) entries of largest |delta| (all for density ≥ 1, none for density ≤ 0)."""
    import torch

    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    flat = delta.reshape(-1)
    idx = torch.topk(flat.abs(), k, sorted=False).indices
    out = torch.zeros_like(flat)
    out[idx] = flat[idx]
    return out.reshape(delta.shape)


def ties_tensor(base, tensors, weights, densities):
    """TIES for one tensor, from in-memory tensors (the streaming path in `merge_models` computes the same)."""
    import torch

    b = base.to(_work_dtype(base))
    deltas = [trim_top_magnitude(t.to(b.dtype) - b, d) * w for t, w, d in zip(tensors, weights, densities)]
    elected = torch.where(torch.stack(deltas).sum(0) >= 0, 1.0, -1.0).to(b.dtype)
    mixed = torch.zeros_like(b)
    divisor = torch.zeros_like(b)
    for d, w in zip(deltas, weights):
        agree = (torch.sign(d) == elected).to(b.dtype)
        mixed += d * agree
        divisor += w * agree
    divisor[divisor == 0] = 1
    return b + mixed / divisor


# ---------------------------------------------------------------------------------------------------------------
# Reading inputs.

@dataclass
class _Checkpoint:
    """One input model: where each tensor lives, opened lazily."""

    name: str  # as the user gave it (for messages)
    dir: Path
    files: dict[str, Path]  # tensor name -> safetensors file
    config: dict

    def open(self, stack: ExitStack) -> "_Reader":
        from safetensors import safe_open

        handles = {}
        for f in sorted(set(self.files.values())):
            try:
                handles[f] = stack.enter_context(safe_open(str(f), framework="pt"))
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                raise CptlabError(f"model {self.name}: cannot read {f.name}: {e}") from None
        return _Reader(self, handles)


@dataclass
class _Reader:
    ckpt: _Checkpoint
    handles: dict

    def shape(self, key: str) -> list[int]:
        return list(self.handles[self.ckpt.files[key]].get_slice(key).get_shape())

    def dtype(self, key: str) -> str:
        return self.handles[self.ckpt.files[key]].get_slice(key).get_dtype()

    def get(self, key: str):
        return self.handles[self.ckpt.files[key]].get_tensor(key)


def _index_checkpoint(path: Path, name: str) -> _Checkpoint:
    if not path.is_dir():
        raise CptlabError(f"model {name}: directory not found")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CptlabError(f"model {name}: no config.json (an HF model dir is expected)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CptlabError(f"{cfg_path}: not valid JSON: {e}") from None
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise CptlabError(f"{index}: not a safetensors index (weight_map missing or bad JSON): {e}") from None
        files = {k: path / v for k, v in weight_map.items()}
        for f in set(files.values()):
            if not f.is_file():
                raise CptlabError(f"{index}: names {f.name}, which is missing")
    elif single.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(single), framework="pt") as f:
                keys = list(f.keys())
        except Exception as e:  # noqa: BLE001
            raise CptlabError(f"model {name}: cannot read {single.name}: {e}") from None
        files = {k: single for k in keys}
    elif any(path.glob("*.bin")):
        raise CptlabError(f"model {name}: only PyTorch .bin weights found; cptlab merges safetensors "
                          f"(re-save it with save_pretrained(..., safe_serialization=True))")
    else:
        raise CptlabError(f"model {name}: no model.safetensors or model.safetensors.index.json")
    return _Checkpoint(name=name, dir=path, files=files, config=config)


def _merge_adapter(adapter_dir: Path, base: Path | None, tmp_root: Path, index: int) -> tuple[Path, str]:
    """Merge a LoRA adapter into its base model with peft; return the merged model dir (under tmp_root)."""
    cfg_path = adapter_dir / "adapter_config.json"
    try:
        adapter_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CptlabError(f"{cfg_path}: not valid JSON: {e}") from None
    base_name = adapter_cfg.get("base_model_name_or_path")
    candidates = [Path(base_name).expanduser()] if base_name else []
    if base is not None:
        candidates.append(base)
    base_dir = next((c for c in candidates if c.is_dir()), None)
    if base_dir is None:
        raise CptlabError(f"{cfg_path}: base model {base_name!r} is not a local directory; pass --base DIR "
                          f"to name the model the adapter was trained on")
    from peft import PeftModel

    from cptlab.model import load_model

    model = load_model(base_dir)
    try:
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CptlabError(f"adapter {adapter_dir}: cannot apply it to {base_dir}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    out = tmp_root / f"adapter-{index}"
    merged.save_pretrained(out, safe_serialization=True)
    _copy_side_files(base_dir, out)
    _copy_side_files(adapter_dir, out, skip_existing=True)
    return out, f"{adapter_dir} (LoRA adapter merged into {base_dir})"


def _copy_side_files(src: Path, dst: Path, skip_existing: bool = False) -> None:
    """Config, generation config and tokenizer files: every top-level file that holds no weights."""
    for f in src.iterdir():
        if not f.is_file() or f.name.endswith(WEIGHT_FILE_SUFFIXES) or f.name.endswith(".index.json"):
            continue
        if f.name.startswith("adapter_") or f.name in ("merge.json", "README.md"):
            continue
        if skip_existing and (dst / f.name).exists():
            continue
        shutil.copy2(f, dst / f.name)


def _check_compatible(ckpts: list[_Checkpoint], readers: list[_Reader]) -> list[str]:
    """Same architecture, same tensor names, same shapes; returns the tensor names in a stable order."""
    first = ckpts[0]
    for c in ckpts[1:]:
        for key in ("model_type", "architectures"):
            if first.config.get(key) != c.config.get(key):
                raise CptlabError(f"models {first.name} and {c.name} differ in architecture: config {key} is "
                                  f"{first.config.get(key)!r} vs {c.config.get(key)!r}")
        missing = sorted(set(first.files) - set(c.files))
        extra = sorted(set(c.files) - set(first.files))
        if missing or extra:
            what = (f"tensor {missing[0]} is in {first.name} but not in {c.name}" if missing
                    else f"tensor {extra[0]} is in {c.name} but not in {first.name}")
            n = len(missing) + len(extra)
            raise CptlabError(f"models {first.name} and {c.name} have different tensors: {what}"
                              + (f" ({n} names differ)" if n > 1 else ""))
    names = sorted(first.files)
    for key in names:
        s0 = readers[0].shape(key)
        for c, r in zip(ckpts[1:], readers[1:]):
            s = r.shape(key)
            if s != s0:
                raise CptlabError(f"tensor {key}: shape {s0} in {first.name} but {s} in {c.name} "
                                  f"(the models must have the same architecture and vocabulary)")
    return names


# ---------------------------------------------------------------------------------------------------------------
# The merge.

def _parse_list(values, k: int, what: str, default: float) -> list[float]:
    if values is None:
        return [default] * k
    values = [float(v) for v in values]
    if len(values) != k:
        raise UsageError(f"--{what}: {len(values)} values for {k} models (give one per --model)")
    return values


def merge_models(models: list[str | Path], method: str, out_dir: str | Path, base: str | Path | None = None,
                 weights: list[float] | None = None, density: float | list[float] = 0.5, t: float = 0.5,
                 shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False) -> MergeResult:
    """Merge `models` into an HF dir at `out_dir` (written atomically). See the module docstring for the methods.

    `weights`: one per model (linear default 1/k, task-arithmetic/TIES default 1). `density`: TIES only, one value
    or one per model. `t`: SLERP only. `base`: required by task-arithmetic and TIES, refused by the others
    (except as the base of a LoRA adapter). An existing non-empty `out_dir` is replaced only with `overwrite`.
    """
    import torch
    from safetensors.torch import save_file

    if method not in METHODS:
        raise UsageError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if not models:
        raise UsageError("--model: give at least one model")
    if method in NEEDS_BASE and base is None:
        raise UsageError(f"--method {method} needs --base DIR: the model the others were fine-tuned from "
                         f"(task vectors are differences to it)")
    has_adapter = any((Path(m).expanduser() / "adapter_config.json").is_file() for m in models)
    if method in ("linear", "slerp") and base is not None and not has_adapter:
        raise UsageError(f"--method {method} does not use --base (task-arithmetic and ties do; with a LoRA "
                         f"adapter among the models, --base names the model it applies to)")
    k = len(models)
    if method == "slerp":
        if k != 2:
            raise UsageError(f"--method slerp interpolates exactly two models; got {k}")
        if weights is not None:
            raise UsageError("--method slerp uses --t, not --weights")
        if not 0.0 <= t <= 1.0:
            raise UsageError(f"--t {t}: must be in [0, 1] (0 gives the first model, 1 the second)")
    elif method == "linear" and k < 2:
        raise UsageError("--method linear needs at least two --model")
    ws = None if method == "slerp" else _parse_list(weights, k, "weights", 1.0 / k if method == "linear" else 1.0)
    if isinstance(density, (int, float)):
        densities = [float(density)] * k
    else:
        densities = _parse_list(density, k, "density", 0.5)
    if method == "ties" and any(not 0.0 < d <= 1.0 for d in densities):
        raise UsageError(f"--density {densities}: each must be in (0, 1] (the fraction of each task vector kept)")

    out_dir = Path(out_dir)
    _check_out_dir(out_dir, list(models) + ([base] if base is not None else []), overwrite)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix=".merge-", dir=out_dir.parent if out_dir.parent.exists() else None) \
            as tmp, ExitStack() as stack:
        tmp_root = Path(tmp)
        base_path = Path(base).expanduser() if base is not None else None
        resolved: list[tuple[Path, str]] = []
        for i, m in enumerate(models):
            p = Path(m).expanduser()
            if (p / "adapter_config.json").is_file():
                merged, note = _merge_adapter(p, base_path, tmp_root, i)
                notes.append(note)
                resolved.append((merged, str(m)))
            else:
                resolved.append((p, str(m)))
        ckpts = [_index_checkpoint(p, name) for p, name in resolved]
        base_ckpt = None
        if base_path is not None:
            base_ckpt = _index_checkpoint(base_path, str(base))
        all_ckpts = ckpts + ([base_ckpt] if base_ckpt is not None else [])
        readers = [c.open(stack) for c in all_ckpts]
        names = _check_compatible(all_ckpts, readers)
        model_readers = readers[:k]
        base_reader = readers[k] if base_ckpt is not None else None

        total_bytes, shard_files = 0, []
        pending: dict[str, torch.Tensor] = {}
        pending_bytes = 0

        with atomic_dir(out_dir) as out_tmp:
            def flush():
                nonlocal pending, pending_bytes
                if pending:
                    f = out_tmp / f"shard-{len(shard_files):05d}.safetensors"
                    save_file(pending, str(f), metadata={"format": "pt"})
                    shard_files.append((f, list(pending)))
                    pending, pending_bytes = {}, 0

            for key in names:
                dtype = model_readers[0].dtype(key)
                if dtype not in FLOAT_DTYPES:
                    merged = model_readers[0].get(key)  # integer buffers (rare in LMs): the first model's values
                else:
                    merged = _merge_one(key, method, model_readers, base_reader, ws, densities, t)
                    merged = merged.to(getattr(torch, FLOAT_DTYPES[dtype]))
                nbytes = merged.numel() * merged.element_size()
                if pending and pending_bytes + nbytes > shard_bytes:
                    flush()
                pending[key] = merged.contiguous()
                pending_bytes += nbytes
                total_bytes += nbytes
            flush()
            _name_shards(out_tmp, shard_files, total_bytes)
            _copy_side_files(ckpts[0].dir, out_tmp)
            result = MergeResult(out_dir=str(out_dir), method=method, models=[str(m) for m in models],
                                 base=str(base) if base is not None else None, weights=ws,
                                 density=(densities[0] if len(set(densities)) == 1 else densities)
                                 if method == "ties" else None,
                                 t=t if method == "slerp" else None, tensors=len(names),
                                 shards=len(shard_files), bytes=total_bytes, notes=notes)
            (out_tmp / "merge.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result


def _check_out_dir(out_dir: Path, inputs: list, overwrite: bool) -> None:
    out = out_dir.expanduser().resolve()
    for m in inputs:
        if Path(m).expanduser().resolve() == out:
            raise UsageError(f"--out {out_dir}: is also an input model; write the merge somewhere else")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise CptlabError(f"--out {out_dir}: exists and is not empty; pass --force to replace it")
        if not out.is_dir():
            raise CptlabError(f"--out {out_dir}: exists and is not a directory")


def _merge_one(key, method, readers, base_reader, ws, densities, t):
    """One merged tensor, in float32 (float64 for float64 inputs).

    Holds at most two input tensors at a time (the base's and the current model's, or SLERP's two ends) plus
    work buffers of the same size; each model's tensor is read from its memory map when needed and dropped after.
    """
    import torch

    if method == "slerp":
        return slerp_tensor(t, readers[0].get(key), readers[1].get(key))
    if method == "linear":
        out = None
        for r, w in zip(readers, ws):
            x = r.get(key)
            if out is None:
                out = torch.zeros(x.shape, dtype=_work_dtype(x))
            out.add_(x.to(out.dtype), alpha=w)
            del x
        return out
    base = base_reader.get(key)
    base = base.to(_work_dtype(base))

    def delta(i):
        return readers[i].get(key).to(base.dtype) - base

    if method == "task-arithmetic":
        out = base.clone()
        for i, w in enumerate(ws):
            out.add_(delta(i), alpha=w)
        return out
    # TIES, streaming: pass 1 elects the sign, pass 2 averages the entries that agree with it.
    sign_sum = torch.zeros_like(base)
    for i, (w, d) in enumerate(zip(ws, densities)):
        sign_sum += trim_top_magnitude(delta(i), d) * w
    elected = torch.where(sign_sum >= 0, 1.0, -1.0).to(base.dtype)
    del sign_sum
    mixed = torch.zeros_like(base)
    divisor = torch.zeros_like(base)
    for i, (w, d) in enumerate(zip(ws, densities)):
        dl = trim_top_magnitude(delta(i), d) * w
        agree = (torch.sign(dl) == elected).to(base.dtype)
        mixed += dl * agree
        divisor += w * agree
    divisor[divisor == 0] = 1
    return base + mixed / divisor


def _name_shards(out: Path, shard_files: list[tuple[Path, list[str]]], total_bytes: int) -> None:
    """One shard -> model.safetensors; several -> model-0000i-of-0000n.safetensors + index (HF layout)."""
    if len(shard_files) == 1:
        shard_files[0][0].rename(out / "model.safetensors")
        return
    n = len(shard_files)
    weight_map = {}
    for i, (f, keys) in enumerate(shard_files, start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        f.rename(out / name)
        weight_map.update({key: name for key in keys})
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
