"""Parameter sensitivity: how much does held-out loss rise when the weights are nudged? (arXiv 2503.19206)

"Overtrained Language Models Are Harder to Fine-Tune" measures it as the change of perplexity after
θ ← θ + γ·ε, with ε drawn per tensor at the tensor's initialization scale; the change grows with the number of
pretraining tokens, which is why fine-tuning a later checkpoint can end worse than an earlier one.

Per tensor, ε = s · N(0, 1) where the scale s is (`noise_scale`):
  init      the std the model was initialised with: `config.initializer_range` for Linear/Embedding weights
            (GPT-2's residual projections `c_proj`: initializer_range / sqrt(2 · n_layer), as transformers
            initialises them). Norm weights and biases are initialised to constants (std 0); with
            `params="all"` they get initializer_range too, so that every tensor moves by the same absolute amount.
  rms       the tensor's own root-mean-square value (a relative perturbation);
  absolute  1.
`params="2d"` (default) perturbs matrices only (Linear and Embedding weights; tied weights count once).

The noise of tensor `name` under seed `k` comes from its own generator seeded with hash(k, name), so it does not
depend on which other tensors are perturbed or in what order. The perturbation is applied in place and reverted:
  copy      (default) a host-memory copy of each perturbed tensor is kept and copied back: bit-exact; the
            accelerator holds one model, host memory holds one more copy of the perturbed tensors.
  subtract  the noise is regenerated from the seed and subtracted: no extra memory, but floating-point rounding
            can leave the last bit of some weights changed (the result records whether the weights came back
            bit-identical, by comparing fingerprints).
"""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

from cptlab.diagnose.checkpoint_series import Checkpoint, summarize
from cptlab.errors import CptlabError, UsageError

SCALES = ("init", "rms", "absolute")
PARAM_SETS = ("2d", "all")
REVERT_METHODS = ("copy", "subtract")


@dataclass
class TensorNoise:
    """How one tensor is perturbed: its noise std at γ = 1 and where that number came from."""

    name: str
    shape: tuple[int, ...]
    std: float
    source: str


def check_options(scale: str, params: str, revert: str = "copy") -> None:
    if scale not in SCALES:
        raise UsageError(f"--noise-scale {scale!r}: expected one of {', '.join(SCALES)}")
    if params not in PARAM_SETS:
        raise UsageError(f"--params {params!r}: expected one of {', '.join(PARAM_SETS)}")
    if revert not in REVERT_METHODS:
        raise UsageError(f"--revert {revert!r}: expected one of {', '.join(REVERT_METHODS)}")


def initializer_std(config) -> tuple[float, str]:
    for attr in ("initializer_range", "init_std"):
        v = getattr(config, attr, None)
        if isinstance(v, (int, float)) and v > 0:
            return float(v), f"config.{attr}"
    return 0.02, "default 0.02 (config has no initializer_range)"


def noise_plan(model, scale: str = "init", params: str = "2d") -> list[tuple[TensorNoise, Any]]:
    """[(TensorNoise, parameter)] for every tensor that will be perturbed, in `named_parameters` order."""
    check_options(scale, params)
    base_std, base_src = initializer_std(model.config)
    model_type = getattr(model.config, "model_type", "")
    n_layer = getattr(model.config, "n_layer", None) or getattr(model.config, "num_hidden_layers", None) or 1
    plan = []
    for name, p in model.named_parameters():  # tied weights appear once
        if params == "2d" and p.dim() < 2:
            continue
        if scale == "absolute":
            std, src = 1.0, "absolute"
        elif scale == "rms":
            std, src = float(p.detach().double().pow(2).mean().sqrt()), "tensor RMS"
        elif p.dim() < 2:
            std, src = base_std, f"{base_src} (constant-initialised tensor)"
        elif model_type == "gpt2" and name.endswith("c_proj.weight"):
            std, src = base_std / math.sqrt(2 * n_layer), f"{base_src} / sqrt(2 n_layer)"
        else:
            std, src = base_std, base_src
        plan.append((TensorNoise(name, tuple(p.shape), std, src), p))
    if not plan:
        raise CptlabError(f"model has no parameters to perturb with --params {params}")
    return plan


def tensor_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def tensor_noise(t: TensorNoise, p, gamma: float, seed: int):
    """γ · std · N(0, 1) for one tensor, in the parameter's dtype and device (fp32 draws, then cast)."""
    import torch

    dev = p.device if p.device.type == "cuda" else torch.device("cpu")
    gen = torch.Generator(device=dev)
    gen.manual_seed(tensor_seed(seed, t.name))
    eps = torch.randn(p.shape, generator=gen, device=dev, dtype=torch.float32)
    return eps.mul_(gamma * t.std).to(device=p.device, dtype=p.dtype)


@contextmanager
def perturbed(plan: list[tuple[TensorNoise, Any]], gamma: float, seed: int, revert: str = "copy") -> Iterator[None]:
    """Inside the block the parameters are θ + γ·ε; on exit they are restored (see module doc for `revert`)."""
    import torch

    if revert not in REVERT_METHODS:
        raise UsageError(f"revert {revert!r}: expected one of {', '.join(REVERT_METHODS)}")
    if gamma == 0:  # nothing to add: the weights are not touched at all (not even -0.0 -> +0.0)
        yield
        return
    backups: list[tuple[Any, Any]] = []
    done: list[tuple[TensorNoise, Any]] = []
    try:
        with torch.no_grad():
            for t, p in plan:
                if t.std == 0:
                    continue
                delta = tensor_noise(t, p, gamma, seed)
                if revert == "copy":
                    backups.append((p, p.detach().to("cpu", copy=True)))
                p.add_(delta)
                done.append((t, p))
                del delta
        yield
    finally:
        with torch.no_grad():
            if revert == "copy":
                for p, saved in backups:
                    p.copy_(saved)
            else:
                for t, p in done:
                    p.sub_(tensor_noise(t, p, gamma, seed))


def parameters_fingerprint(model) -> str:
    """sha256 over every parameter's bytes (names included): equal fingerprints mean bit-identical weights."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(_int_view(p)).numpy().tobytes())
    return h.hexdigest()


def _int_view(p):
    import torch

    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[p.element_size()]


# ---------------------------------------------------------------- held-out tokens and the loss


@dataclass
class HeldOut:
    """Fixed windows of held-out tokens per domain: each row is seq_len + 1 tokens, every token scored once."""

    windows: dict[str, Any]  # domain -> LongTensor [n, seq_len + 1]
    seq_len: int
    tokens: dict[str, int] = field(default_factory=dict)  # scored tokens per domain

    def describe(self) -> str:
        total = sum(self.tokens.values())
        return (f"internal: mean next-token NLL over fixed windows of {self.seq_len} tokens, "
                f"{total} scored tokens ({', '.join(f'{d} {n}' for d, n in self.tokens.items())})")


def held_out_tokens(corpus: str, tokenizer, split: str = "valid", domains: Sequence[str] | None = None,
                    max_tokens: int = 16384, seq_len: int = 256) -> HeldOut:
    """Documents of each domain's split, joined with EOS, cut into windows; at most `max_tokens` scored per domain."""
    import torch

    from cptlab.corpus import iter_documents, open_corpus

    if max_tokens < 1 or seq_len < 1:
        raise UsageError(f"--max-tokens {max_tokens} / seq_len {seq_len}: must be positive")
    c = open_corpus(corpus)
    names = list(domains) if domains else [d for d in c.domain_names() if split in c.domains[d]]
    if not names:
        raise CptlabError(f"corpus {corpus}: no domain has a {split!r} split")
    eos = tokenizer.eos_token_id
    windows, counts = {}, {}
    for d in names:
        ids: list[int] = []
        need = max_tokens + 1
        for doc in iter_documents(c.source(d, split)):
            ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
            ids.append(eos)
            if len(ids) >= need:
                break
        n_rows = max(0, (min(len(ids), need) - 1) // seq_len)
        if n_rows == 0:
            raise CptlabError(f"corpus {corpus}: domain {d!r} split {split!r} has only {len(ids)} tokens; "
                              f"need at least {seq_len + 1} (lower seq_len)")
        t = torch.tensor(ids[:n_rows * seq_len + 1], dtype=torch.long)
        # Row r reads tokens [r·L, (r+1)·L] inclusive: consecutive windows share one token, each target once.
        windows[d] = t.unfold(0, seq_len + 1, seq_len)
        counts[d] = n_rows * seq_len
    return HeldOut(windows, seq_len, counts)


def heldout_loss(model, data: HeldOut, batch_size: int = 8) -> dict[str, float]:
    """{"loss": token-weighted mean NLL over all domains, "domains": {d: mean NLL}} in fp32, no grad."""
    import torch
    import torch.nn.functional as F

    model.eval()
    dev = next(model.parameters()).device
    per: dict[str, float] = {}
    total_nll, total_n = 0.0, 0
    with torch.inference_mode():
        for d, rows in data.windows.items():
            nll, n = 0.0, 0
            for a in range(0, rows.shape[0], batch_size):
                batch = rows[a:a + batch_size].to(dev)
                logits = model(input_ids=batch[:, :-1], use_cache=False).logits.float()
                nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                             reduction="sum"))
                n += batch[:, 1:].numel()
            per[d] = nll / n
            total_nll += nll
            total_n += n
    return {"loss": total_nll / total_n, "domains": per}


# ---------------------------------------------------------------- the measurement


@dataclass
class SensitivitySettings:
    gammas: list[float]
    seeds: int = 5
    noise_scale: str = "init"
    params: str = "2d"
    revert: str = "copy"
    split: str = "valid"
    domains: list[str] | None = None
    max_tokens: int = 16384
    seq_len: int | None = None  # None: min(model context, 256)
    batch_size: int = 8
    seed_offset: int = 0

    def check(self) -> None:
        check_options(self.noise_scale, self.params, self.revert)
        if not self.gammas:
            raise UsageError("--gammas: give at least one value, e.g. 1e-3,3e-3,1e-2")
        if any(not math.isfinite(g) or g < 0 for g in self.gammas):
            raise UsageError(f"--gammas {self.gammas}: values must be finite and >= 0")
        if self.seeds < 1:
            raise UsageError(f"--seeds {self.seeds}: must be at least 1")


def measure_model(model, data: HeldOut, s: SensitivitySettings, progress=None) -> dict[str, Any]:
    """Base loss, then per γ and seed the loss of the perturbed model; mean/std/SEM of the changes over seeds."""
    plan = noise_plan(model, s.noise_scale, s.params)
    before = parameters_fingerprint(model)
    base = heldout_loss(model, data, s.batch_size)
    base_loss = base["loss"]
    rows = []
    for g in s.gammas:
        losses, dom_losses = [], []
        for k in range(s.seeds):
            with perturbed(plan, g, s.seed_offset + k, s.revert):
                r = heldout_loss(model, data, s.batch_size)
            losses.append(r["loss"])
            dom_losses.append(r["domains"])
            if progress is not None:
                progress()
        d_loss = [x - base_loss for x in losses]
        d_ppl = [math.exp(x) - math.exp(base_loss) for x in losses]
        rel = [math.exp(x - base_loss) - 1 for x in losses]
        rows.append({
            "gamma": g, "seeds": [s.seed_offset + k for k in range(s.seeds)], "loss": losses,
            "delta_loss": summarize(d_loss), "delta_ppl": summarize(d_ppl), "relative_ppl": summarize(rel),
            "domains": {d: summarize([dl[d] - base["domains"][d] for dl in dom_losses]) for d in base["domains"]},
        })
    after = parameters_fingerprint(model)
    n_perturbed = sum(p.numel() for _, p in plan)
    stds = [t.std for t, _ in plan]
    return {
        "base": {"loss": base_loss, "ppl": math.exp(base_loss), "domains": base["domains"]},
        "gammas": rows,
        "perturbed_tensors": len(plan), "perturbed_parameters": n_perturbed,
        "noise_std": {"min": min(stds), "max": max(stds), "sources": sorted({t.source for t, _ in plan})},
        "tensors": [asdict(t) for t, _ in plan],
        "revert": {"method": s.revert, "bit_identical": before == after, "fingerprint": before},
    }


def run_sensitivity(series: list[Checkpoint], corpus: str, settings: SensitivitySettings,
                    tokenizer_dir: str | None = None, device: str | None = None, dtype: str = "fp32") -> dict:
    """Measure every checkpoint of a series (one model in memory at a time) on the same held-out tokens."""
    from cptlab.console import log
    from cptlab.model import check_vocab, count_parameters, load_model
    from cptlab.tokens.tokenizer import load_tokenizer, tokenizer_fingerprint

    settings.check()
    if not series:
        raise UsageError("--model: give at least one model")
    tok = load_tokenizer(tokenizer_dir or series[0].model_dir)
    fp = tokenizer_fingerprint(tok)
    if tokenizer_dir is None:
        for c in series[1:]:
            try:
                other = load_tokenizer(c.model_dir)
            except CptlabError:
                continue
            if tokenizer_fingerprint(other) != fp:
                raise CptlabError(f"model {c.model_dir}: its tokenizer differs from {series[0].model_dir}'s; "
                                  "sensitivity compares checkpoints of one run on the same tokens")
    data = None
    models = []
    start = time.perf_counter()
    for i, c in enumerate(series):
        model = load_model(c.model_dir, dtype=dtype, device=device)
        if data is None:
            ctx = int(getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions",
                                                                                        256))
            seq_len = settings.seq_len or min(ctx, 256)
            data = held_out_tokens(corpus, tok, settings.split, settings.domains, settings.max_tokens, seq_len)
        check_vocab(model, max(int(w.max()) for w in data.windows.values()), f"corpus {corpus} ({c.model_dir})")
        n_params = count_parameters(model)
        log(f"sensitivity [{i + 1}/{len(series)}] {c.label}: {len(settings.gammas)} gamma(s) x {settings.seeds} "
            f"seed(s) on {sum(data.tokens.values())} tokens")
        m = measure_model(model, data, settings)
        models.append({**c.to_dict(), "parameters": n_params,
                       "tokens_per_parameter": None if c.tokens is None else c.tokens / n_params, **m})
        del model
    return {
        "kind": "sensitivity",
        "settings": {**asdict(settings), "seq_len": data.seq_len, "corpus": str(corpus), "dtype": dtype,
                     "device": device or "cpu", "evaluator": data.describe(),
                     "ordered_by": "tokens" if all(c.tokens is not None for c in series) else "as given"},
        "models": models,
        "seconds": round(time.perf_counter() - start, 2),
    }


def curve_at(result: dict, gamma: float, key: str = "delta_loss") -> list[dict[str, Any]]:
    """Sensitivity vs tokens at one γ: [{"label", "tokens", "tokens_per_parameter", "mean", "sem", "std"}]."""
    out = []
    for m in result["models"]:
        for row in m["gammas"]:
            if math.isclose(row["gamma"], gamma, rel_tol=1e-9, abs_tol=0.0):
                s = row[key]
                out.append({"label": m["label"], "tokens": m.get("tokens"),
                            "tokens_per_parameter": m.get("tokens_per_parameter"),
                            "mean": s["mean"], "std": s["std"], "sem": s["sem"]})
    return out


def parse_gammas(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise UsageError(f"--gammas {text!r}: expected comma-separated numbers, e.g. 1e-3,3e-3,1e-2") from None
    if not values:
        raise UsageError(f"--gammas {text!r}: expected comma-separated numbers, e.g. 1e-3,3e-3,1e-2")
    return values
