"""What a run needs before its first step: the tokenizer, the token cache and sampler, the model, the optimizer.

Each function takes the validated `TrainConfig` and raises `CptlabError` naming the config field on bad input.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from cptlab.errors import CptlabError


def is_preset(name: str) -> bool:
    from cptlab.model.presets import PRESETS

    return name in PRESETS


def init_weights_dir(cfg) -> str | None:
    """Where the starting weights come from: `model.init_from` (a checkpoint or HF dir) or `model.name`."""
    src = cfg.model.init_from
    if src is None:
        return None
    p = Path(src).expanduser()
    if (p / "model" / "config.json").is_file():  # a checkpoints/step-X dir
        return str(p / "model")
    if (p / "config.json").is_file():
        return str(p)
    raise CptlabError(f"model.init_from: {src}: not a checkpoint dir (step-X/model/) nor an HF model dir")


def tokenizer_source(cfg) -> str:
    if cfg.tokenizer:
        return cfg.tokenizer
    weights = init_weights_dir(cfg)
    if weights is not None:
        return weights
    if is_preset(cfg.model.name):
        raise CptlabError(f"tokenizer: required when model.name is the preset {cfg.model.name!r}")
    return cfg.model.name


def prepare_cache(cfg, tokenizer_dir: str, out_dir: Path, is_main: bool, eval_domains: list[str]) -> Path:
    """The token cache dir; built (or reused when current) from `data.corpus` by the main process."""
    data = cfg.data
    if data.template is not None:
        from cptlab.tokens import token_cache

        if "template" not in inspect.signature(token_cache.build_cache).parameters:
            raise CptlabError("data.template: this version of the token cache cannot apply templates yet")
    if data.corpus is None:
        cache = Path(data.cache_dir).expanduser()
        if not cache.is_dir():
            raise CptlabError(f"data.cache_dir: {cache}: not found (build it with `cptlab prepare`, or give "
                              f"data.corpus to build it here)")
        return cache
    cache = Path(data.cache_dir).expanduser() if data.cache_dir else out_dir / "tokens"
    if is_main:
        from cptlab.tokens.token_cache import build_cache

        domains = sorted({n.partition("/")[0] for n in data.sources} | set(eval_domains))
        splits = sorted({data.split} | {s for n in data.sources for s in [n.partition("/")[2]] if s}
                        | ({cfg.eval.split} if eval_domains else set()))
        kwargs = {"template": data.template} if data.template is not None else {}
        build_cache(data.corpus, tokenizer_dir, cache, domains=domains, splits=splits, **kwargs)
    return cache


def build_sampler(cfg, cache: Path, tokenizer):
    from cptlab.tokens.mixture import MixtureSampler
    from cptlab.tokens.tokenizer import tokenizer_fingerprint

    sampler = MixtureSampler.from_caches(cache, cfg.data.sources, cfg.data.seq_len, seed=cfg.seed,
                                         split=cfg.data.split)
    fp = tokenizer_fingerprint(tokenizer)
    for name, src in sampler.sources.items():
        have = (getattr(src.tokens, "manifest", None) or {}).get("tokenizer_fingerprint")
        if have and have != fp:
            raise CptlabError(f"data.sources.{name}: the token cache {cache} was made with another tokenizer than "
                              f"{tokenizer_source(cfg)}; rebuild it or set `tokenizer`")
    return sampler


def eval_sources(cfg, cache: Path, domains: list[str]) -> dict:
    from cptlab.tokens.packing import PackedSource
    from cptlab.tokens.token_cache import open_tokens

    out = {}
    for d in domains:
        try:
            out[d] = PackedSource(open_tokens(cache, d, cfg.eval.split), cfg.data.seq_len, seed=0, name=d)
        except CptlabError as e:
            raise CptlabError(f"eval (domains {d}, split {cfg.eval.split}): {e}") from None
    return out


def build_model(cfg, tokenizer, weights_dir: str | None = None):
    """The model in fp32 (autocast does the low precision): a preset from scratch, or loaded weights."""
    from cptlab.model import build_preset, load_model
    m = cfg.model
    if weights_dir is not None:
        return load_model(weights_dir, dtype="fp32", trust_remote_code=m.trust_remote_code)
    if is_preset(m.name):
        if m.init == "pretrained":
            raise CptlabError(f"model.init: {m.name!r} is a preset (random weights); use init: scratch or a model dir")
        return build_preset(m.name, tokenizer, seed=cfg.seed, context=m.context)
    if m.context is not None:
        raise CptlabError("model.context: only for presets")
    if m.init == "scratch":
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            config = AutoConfig.from_pretrained(m.name, trust_remote_code=m.trust_remote_code)
        except (OSError, ValueError) as e:
            raise CptlabError(f"model.name: {m.name}: cannot read its config: {str(e).splitlines()[0]}") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return AutoModelForCausalLM.from_config(config, trust_remote_code=m.trust_remote_code)
    return load_model(m.name, dtype="fp32", trust_remote_code=m.trust_remote_code)


def apply_lora(cfg, model):
    """Wrap the model with LoRA adapters (peft); only the adapters train."""
    import torch
    from peft import LoraConfig, get_peft_model

    lc = cfg.lora
    targets = lc.target_modules
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    wanted = [targets] if isinstance(targets, str) else list(targets)
    if isinstance(targets, list) and not set(wanted) & names:
        raise CptlabError(f"lora.target_modules: none of {wanted} is a module of this model "
                          f"(it has e.g. {', '.join(sorted(names - {''})[:12])})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))


def adapter_state(model) -> dict:
    """The trainable (adapter) tensors of a LoRA model, by parameter name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def build_optimizer(cfg, model, device):
    import torch

    o = cfg.optimizer
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = o.fused
    if fused is None:
        fused = device.type in ("cuda", "cpu", "xpu")
    try:
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=fused or None)
    except (RuntimeError, ValueError) as e:
        if o.fused:
            raise CptlabError(f"optimizer.fused: not available on {device.type}: {e}") from None
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)


def compile_model(loss_module):
    """torch.compile, region by region: each decoder block is compiled in place (one compiled graph serves all
    blocks of the same code, so a cold start costs one block's compile, not the whole model's); the chunked loss
    stays eager (it is already one matmul + one exp pass per chunk). Models without a block list: the whole
    loss module is compiled. Parameter names (and so checkpoints) are unchanged either way."""
    import torch

    from cptlab.train.sharding import decoder_blocks

    blocks = decoder_blocks(loss_module.model)
    if blocks is None:
        return torch.compile(loss_module)
    for block in blocks:
        block.compile()
    return loss_module

