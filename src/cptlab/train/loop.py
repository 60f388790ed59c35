"""The training loop, top to bottom: setup -> (resume) -> while step < total: step, log, eval, checkpoint -> export.

One optimizer step = `grad_accum` micro-batches; together they hold `batch_size` sequences over all processes.
The loss is the SUM of the step's token NLLs divided by the step's token count, so neither accumulation nor the
number of processes changes it (each rank scales its partial sum by world_size because DDP and FSDP average
gradients). `fsdp: true` shards the model over the processes (cptlab.train.sharding); checkpoints are the same.
In pretraining every target is a real token (packing leaves no padding), so the token count is known before the
forward pass. `cptlab sft` (cptlab.sft) runs this same loop on rows of whole examples whose labels are -100 on
prompt tokens and padding: the step's micro-batches are drawn first, and every rank knows the number of target
tokens of the whole step from the global batches, so the loss is again the mean over the step's targets.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from cptlab.console import log
from cptlab.errors import CptlabError
from cptlab.train import checkpoint as ckpt
from cptlab.train import setup, sharding
from cptlab.train.config import TrainConfig
from cptlab.train.metrics import MetricsWriter, SpikeDetector, read_metrics, truncate_metrics
from cptlab.train.schedules import schedule_fn


@dataclass
class TrainResult:
    out_dir: Path
    final_dir: Path
    steps: int
    tokens: int
    last_loss: float | None
    metrics_path: Path
    skipped_steps: int = 0
    main_process: bool = True  # False on the other ranks of a multi-process run (they print nothing)


def _env_steps(name: str) -> set[int]:
    """Test hooks read from the environment (e.g. CPTLAB_TEST_NAN_STEPS=3,4)."""
    return {int(x) for x in os.environ.get(name, "").split(",") if x.strip()}


def _make_accelerator(cfg: TrainConfig):
    import torch
    from accelerate import Accelerator

    # Autocast is applied by the loop itself (around model + loss), so accelerate runs in "no" precision. FSDP is
    # not accelerate's plugin (on accelerators only) but cptlab.train.sharding, the same on CPU and GPU.
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")


def _prepare_out_dir(cfg: TrainConfig, out: Path, is_main: bool) -> Path | None:
    """The checkpoint to resume from (None: a fresh start). Cleans leftovers of killed saves."""
    root = out / "checkpoints"
    existing = (out / "metrics.jsonl").exists() or root.is_dir() or (out / "final").exists()
    if cfg.resume:
        if is_main:
            for p in ckpt.remove_incomplete(root):
                log(f"removed an incomplete checkpoint {p.name} (a save was interrupted)")
        latest = ckpt.latest_checkpoint(root)
        if latest is None and existing and is_main:
            log(f"resume: no complete checkpoint in {root}; starting {out} afresh")
            _clear_run(out)
        return latest
    if existing:
        if not cfg.overwrite:
            raise CptlabError(f"out_dir: {out} already holds a run; pass --resume to continue it, or "
                              f"overwrite: true (--set overwrite=true) to start afresh")
        if is_main:
            _clear_run(out)
    return None


def _clear_run(out: Path) -> None:
    for name in ("checkpoints", "final", "tensorboard"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)


def _is_sft(cfg) -> bool:
    return getattr(cfg, "kind", "cpt") == "sft"


def _inputs_labels(batch):
    """(inputs [b, L], labels [b, L]) of a batch: pretraining windows are [b, L+1]; SFT rows carry labels."""
    labels = getattr(batch, "labels", None)
    if labels is None:
        return batch.input_ids[:, :-1], batch.input_ids[:, 1:]
    return batch.input_ids, labels


def _eval_domains(cfg: TrainConfig) -> list[str]:
    if cfg.eval.interval is None and not cfg.eval.at_end:
        return []
    if _is_sft(cfg):
        return ["sft"] if cfg.data.valid is not None else []
    if cfg.eval.domains is not None:
        return list(dict.fromkeys(cfg.eval.domains))
    return list(dict.fromkeys(n.partition("/")[0] for n in cfg.data.sources))


def evaluate(loss_module, sources: dict, cfg: TrainConfig, batch_size: int, device, autocast, accelerator):
    """{domain: (mean NLL, tokens)} over the first windows of each eval split (same windows every time)."""
    import numpy as np
    import torch

    rank, world = accelerator.process_index, accelerator.num_processes
    results = {}
    was_training = loss_module.training
    loss_module.eval()
    with torch.no_grad():
        for domain, src in sources.items():
            n = max(1, min(src.num_windows, cfg.eval.max_tokens // cfg.data.seq_len))
            mine = list(range(rank, n, world))
            per_rank = -(-n // world)  # every rank runs the same number of forwards (FSDP needs it)
            nll, count = torch.zeros((), device=device), torch.zeros((), device=device)
            for s in range(0, per_rank, batch_size):
                ks = mine[s : s + batch_size]
                real = len(ks)
                ks = ks + [0] * ((min(batch_size, per_rank - s)) - real)
                if not ks:
                    continue
                if hasattr(src, "rows"):  # SFT rows: (inputs, positions, labels)
                    ids, pos, labels = (torch.from_numpy(a).to(device) for a in src.rows(ks))
                else:
                    rows = [src.window(k) for k in ks]
                    ids = torch.from_numpy(np.stack([r[0] for r in rows])).to(device)
                    pos = torch.from_numpy(np.stack([r[1] for r in rows])).to(device)
                    ids, labels = ids[:, :-1], ids[:, 1:].clone()
                labels[real:] = -100  # padding rows of a rank with fewer windows count for nothing
                with autocast():
                    part, _ = loss_module(ids, pos, labels)
                nll += part.float()
                count += (labels != -100).sum()
            if world > 1:
                nll, count = accelerator.reduce(nll, "sum"), accelerator.reduce(count, "sum")
            results[domain] = (float(nll / count), int(count))
    loss_module.train(was_training)
    return results


def train(cfg: TrainConfig) -> TrainResult:
    import torch

    from cptlab.console import set_quiet

    if cfg.quiet:
        set_quiet(True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar at every checkpoint
    t_start = time.time()
    accelerator = _make_accelerator(cfg)
    is_main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    if not is_main:
        set_quiet(True)  # one process speaks (errors still reach the user: they are raised, not logged)
    device = accelerator.device
    out = Path(cfg.out_dir).expanduser().resolve()
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    # ---- what we start from: a fresh run, or this run's newest complete checkpoint
    resume_from = _prepare_out_dir(cfg, out, is_main)
    accelerator.wait_for_everyone()
    total_steps = cfg.total_steps
    if resume_from is not None:
        state = ckpt.load_trainer_state(resume_from)
        if state["step"] >= total_steps and (out / "final" / "config.json").is_file():
            log(f"{out}: already finished at step {state['step']} (nothing to resume)")
            records = [r for r in read_metrics(out / "metrics.jsonl") if "domain" not in r]
            return TrainResult(out, out / "final", state["step"], state["tokens"],
                               records[-1]["loss"] if records else None, out / "metrics.jsonl", main_process=is_main)

    # ---- tokenizer, data
    from cptlab.model import check_vocab, count_parameters
    from cptlab.tokens.tokenizer import load_tokenizer

    tok_src = setup.tokenizer_source(cfg)
    tokenizer = load_tokenizer(tok_src, trust_remote_code=cfg.model.trust_remote_code)
    eval_domains = _eval_domains(cfg)
    sft = _is_sft(cfg)
    if sft:
        from cptlab.sft.sources import build_sources

        sampler, eval_sets, _ = build_sources(cfg, tokenizer, bool(eval_domains))
        max_id, data_where = sampler.max_id, f"data.train {cfg.data.train}"
    else:
        cache = setup.prepare_cache(cfg, tok_src, out, is_main, eval_domains)
        accelerator.wait_for_everyone()
        sampler = setup.build_sampler(cfg, cache, tokenizer)
        eval_sets = setup.eval_sources(cfg, cache, eval_domains)
        max_id = max(int(s.tokens.manifest.get("max_id", -1)) for s in sampler.sources.values())
        data_where = f"data.cache_dir {cache}"
    micro_global = cfg.batch_size // cfg.grad_accum
    if micro_global % world:
        raise CptlabError(f"batch_size: {cfg.batch_size} sequences / grad_accum {cfg.grad_accum} = {micro_global} "
                          f"per micro-batch, not divisible by {world} processes")
    micro = micro_global // world
    tokens_per_step = cfg.tokens_per_step

    # ---- model (fp32 master weights), LoRA, regularizer, optimizer
    weights = setup.init_weights_dir(cfg)
    if resume_from is not None and cfg.lora is None:
        weights = str(resume_from / "model")
    model = setup.build_model(cfg, tokenizer, weights)
    check_vocab(model, max_id, f"{data_where} (model {cfg.model.init_from or cfg.model.name})")
    context = next((getattr(model.config, k) for k in ("max_position_embeddings", "n_positions")
                    if isinstance(getattr(model.config, k, None), int)), None)
    if context is not None and cfg.data.seq_len > context:
        raise CptlabError(f"data.seq_len: {cfg.data.seq_len} is longer than the model's context ({context} "
                          f"positions, model {cfg.model.init_from or cfg.model.name})")
    if cfg.lora is not None:
        model = setup.apply_lora(cfg, model)
        if resume_from is not None:
            from safetensors.torch import load_file

            saved = load_file(str(resume_from / "state" / "adapter.safetensors"))
            with torch.no_grad():
                for name, p in setup.adapter_state(model).items():
                    p.copy_(saved[name])
    model.to(device)
    model.train()
    regularizer = None
    if cfg.regularizer is not None and cfg.regularizer.weight != 0:
        from cptlab.train.regularizers import build_regularizer

        reference_model = None
        if resume_from is not None and cfg.regularizer.reference == "base":
            # The model now holds the checkpoint's weights (or the base + trained adapters): the reference must
            # be the run's starting weights, rebuilt the same way as at step 0.
            reference_model = setup.build_model(cfg, tokenizer, setup.init_weights_dir(cfg))
        regularizer = build_regularizer(cfg.regularizer, model, reference_model=reference_model)
        del reference_model  # the regularizer holds its own frozen copy
    reg_weight = cfg.regularizer.weight if regularizer is not None else 0.0

    from cptlab.train.loss import CausalLMLoss

    loss_module = CausalLMLoss(model, cfg.loss_chunk, cfg.data.document_masking, regularizer)
    fsdp = cfg.fsdp and world > 1
    if cfg.fsdp and not fsdp:
        log("fsdp: one process, nothing to shard (launch with torchrun --nproc_per_node K)")
    if fsdp and cfg.lora is not None:
        raise CptlabError("fsdp: LoRA runs are not sharded (only the small adapters train); set fsdp: false to "
                          "train LoRA data-parallel (DDP)")
    if cfg.compile:
        loss_module = setup.compile_model(loss_module)  # blocks compiled in place, before sharding wraps them
    if fsdp:
        wrapped = sharding.shard(loss_module)  # replaces the parameters: the optimizer is built after it
        log(f"fsdp: parameters, gradients and optimizer state sharded over {world} processes "
            f"({sharding.shard_fraction(model):.0%} of the weights on each)")
    optimizer = setup.build_optimizer(cfg, model, device)
    opt_state = None
    if resume_from is not None:
        opt_state = ckpt.load_tensors(resume_from / "state" / "optimizer.pt")
    elif cfg.model.init_from is not None and not cfg.model.reset_optimizer:
        opt_path = Path(cfg.model.init_from) / "state" / "optimizer.pt"
        if not opt_path.is_file():
            raise CptlabError(f"model.reset_optimizer: false, but {opt_path} does not exist")
        opt_state = ckpt.load_tensors(opt_path)
    if opt_state is not None:
        if fsdp:
            sharding.load_optimizer_state(model, optimizer, opt_state)
        else:
            optimizer.load_state_dict(sharding.optimizer_state_by_index(opt_state, model, optimizer))
        if resume_from is None:
            for g in optimizer.param_groups:  # the new run's hyper-parameters, the old run's moments
                g["betas"], g["eps"] = cfg.optimizer.betas, cfg.optimizer.eps
    if not fsdp:
        wrapped, optimizer = accelerator.prepare(loss_module, optimizer)
    params = [p for p in wrapped.parameters() if p.requires_grad]

    use_autocast = cfg.precision != "fp32" and torch.amp.autocast_mode.is_autocast_available(device.type)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    if cfg.precision != "fp32" and not use_autocast:
        log(f"precision {cfg.precision}: no autocast on {device.type}; training in fp32")

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=use_autocast)

    scaler = torch.amp.GradScaler(device.type, enabled=use_autocast and cfg.precision == "fp16")
    warm = cfg.schedule.rewarm or cfg.model.init_from is None
    lr_fn = schedule_fn(cfg.schedule, total_steps, cfg.optimizer.lr, warmup=warm)
    ckpt_steps, pinned = ckpt.checkpoint_steps(total_steps, tokens_per_step, cfg.checkpoint.interval,
                                               cfg.checkpoint.at_tokens, cfg.checkpoint.log_spaced,
                                               cfg.checkpoint.at_end)

    # ---- training state: fresh, or restored exactly (data position, RNG, counters, metrics file)
    step, tokens, consecutive_bad, skipped_total = 0, 0, 0, 0
    spikes = SpikeDetector(cfg.faults.spike_window, cfg.faults.spike_z)
    if resume_from is not None:
        state = ckpt.load_trainer_state(resume_from)
        step, tokens = int(state["step"]), int(state["tokens"])
        consecutive_bad, skipped_total = int(state["consecutive_nonfinite"]), int(state["skipped_total"])
        spikes = SpikeDetector(cfg.faults.spike_window, cfg.faults.spike_z, state["spike_history"])
        sampler.load_state_dict(state["sampler"])
        rng = ckpt.load_tensors(resume_from / "state" / "rng.pt")
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])
        if is_main:
            truncate_metrics(out / "metrics.jsonl", step)
        log(f"resuming {out} from {resume_from.name} (step {step}, {tokens:,} tokens)")
    else:
        torch.manual_seed(cfg.seed)
    accelerator.wait_for_everyone()
    metrics = MetricsWriter(out, enabled=is_main, tensorboard=cfg.tensorboard)
    if is_main and resume_from is None:
        from cptlab.fsutil import atomic_write_json

        atomic_write_json(out / "train_config.json", cfg.model_dump(mode="json"))

    from cptlab.host_memory import keep_host_memory

    if cfg.keep_host_memory and device.type == "cpu" and keep_host_memory():
        log("host allocator: freed memory is kept for reuse (keep_host_memory: false to turn off)")
    n_params = count_parameters(model, trainable_only=True)
    log(f"training {cfg.model.name} ({n_params:,} trainable params) on {', '.join(sampler.names)}: "
        f"{total_steps} steps x {tokens_per_step:,} tokens, {world} process(es), {cfg.precision}, out {out}")

    def plain_model():
        """Collective under FSDP: the model as one unsharded module on the main process (None elsewhere)."""
        if fsdp:
            state = sharding.full_model_state(model)
            return sharding.host_copy(model, state) if is_main else None
        unwrapped = accelerator.unwrap_model(wrapped)
        return getattr(unwrapped, "_orig_mod", unwrapped).model

    def save(at_step: int) -> None:
        accelerator.wait_for_everyone()
        unwrapped = plain_model()
        opt_state = sharding.full_optimizer_state(model, optimizer) if fsdp else None
        if is_main:
            if opt_state is None:
                opt_state = optimizer.state_dict()
            trainer_state = {
                "step": at_step, "tokens": tokens, "total_steps": total_steps, "sampler": sampler.state_dict(),
                "spike_history": list(spikes.history), "consecutive_nonfinite": consecutive_bad,
                "skipped_total": skipped_total, "world_size": world, "seed": cfg.seed,
            }
            info = {"step": at_step, "tokens": tokens, "tokens_by_source": sampler.tokens_by_source,
                    "epochs_by_source": sampler.epochs_by_source}
            ckpt.save_checkpoint(out / "checkpoints", at_step, unwrapped, tokenizer, opt_state, trainer_state,
                                 setup.adapter_state(unwrapped) if cfg.lora is not None else None, info)
            ckpt.apply_retention(out / "checkpoints", cfg.checkpoint.keep_last, pinned)
        accelerator.wait_for_everyone()

    def run_eval(at_step: int) -> None:
        if not eval_sets:
            return
        res = evaluate(wrapped, eval_sets, cfg, cfg.eval.batch_size or micro, device, autocast, accelerator)
        for domain, (loss, n) in res.items():
            metrics.write({"step": at_step, "split": cfg.eval.split, "domain": domain, "loss": loss, "tokens": n})
        log(f"step {at_step} eval ({cfg.eval.split}): " + ", ".join(f"{d} {v[0]:.4f}" for d, v in res.items()))

    nan_steps, kill_steps = _env_steps("CPTLAB_TEST_NAN_STEPS"), _env_steps("CPTLAB_TEST_KILL_AT_STEP")
    record_windows = bool(os.environ.get("CPTLAB_TEST_RECORD_WINDOWS"))
    last_loss = None
    from rich.progress import TextColumn

    from cptlab.console import progress

    bar = progress(
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"))
    t_last, tokens_last = time.time(), tokens
    with bar:
        task = bar.add_task("train", total=total_steps, completed=step, loss="-", tps="-")
        while step < total_steps:
            lr = lr_fn(step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            nll_sum = torch.zeros((), device=device)
            reg_sum = torch.zeros((), device=device)
            step_windows = []
            # The whole step's data first: with masked labels (SFT) its target count scales every micro-batch.
            batches = [sampler.next_batch(micro_global, rank, world) for _ in range(cfg.grad_accum)]
            step_targets = sum(b.global_targets for b in batches) if sft else tokens_per_step
            for m, batch in enumerate(batches):
                step_windows += batch.windows
                inputs, labels = _inputs_labels(batch)
                ids = inputs.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                pos = batch.position_ids.to(device, non_blocking=True)
                # DDP/FSDP: reduce gradients only on the last micro-batch of the step.
                last = m == cfg.grad_accum - 1
                if fsdp:
                    wrapped.set_requires_gradient_sync(last)
                sync = contextlib.nullcontext() if (last or world == 1 or fsdp) else accelerator.no_sync(wrapped)
                with sync:
                    with autocast():
                        nll, reg = wrapped(ids, pos, labels)
                        loss = nll if reg is None else nll + reg_weight * reg
                        loss = loss * (world / step_targets)
                    if step + 1 in nan_steps:
                        loss = loss * float("nan")
                    scaler.scale(loss).backward()
                nll_sum += nll.detach().float()
                if reg is not None:
                    reg_sum += reg.detach().float()
            if step + 1 in nan_steps:
                nll_sum = nll_sum * float("nan")
            if world > 1:
                nll_sum, reg_sum = accelerator.reduce(nll_sum, "sum"), accelerator.reduce(reg_sum, "sum")
            scaler.unscale_(optimizer)
            # (what accelerate's clip_grad_norm_ does here too); sharded gradients give the norm as a DTensor
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optimizer.grad_clip or float("inf"))
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            # The one host sync of the step: loss and grad norm decide whether the update is applied.
            loss_v, gn_v, reg_v = (torch.stack([nll_sum / step_targets, grad_norm.float().to(device),
                                                reg_sum / step_targets]).tolist())
            finite = math.isfinite(loss_v) and math.isfinite(gn_v)
            if finite or scaler.is_enabled():
                scaler.step(optimizer)  # (a GradScaler skips the step itself on inf/nan gradients)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += tokens_per_step
            if finite:
                consecutive_bad = 0
            else:
                consecutive_bad += 1
                skipped_total += 1
            spike, z = spikes.update(loss_v) if finite else (False, None)
            record = {"step": step, "loss": loss_v if finite else None, "lr": lr, "tokens": tokens,
                      "tokens_by_source": sampler.tokens_by_source,
                      "epochs_by_source": {k: round(v, 6) for k, v in sampler.epochs_by_source.items()},
                      "grad_norm": gn_v if math.isfinite(gn_v) else None, "skipped": not finite,
                      "spike": spike, "z": None if z is None else round(z, 3), "time": round(time.time() - t_start, 3)}
            if regularizer is not None:
                record["reg_loss"] = reg_v
            if sft:
                record["target_tokens"] = sampler.targets_seen  # response tokens trained on so far
            if record_windows:  # test hook: which (source, epoch, window) rows this step trained on
                record["windows"] = [list(w) for w in step_windows]
            metrics.write(record)
            if finite:
                last_loss = loss_v
            else:
                log(f"step {step}: non-finite loss or gradient (loss {loss_v}, grad norm {gn_v}); update skipped "
                    f"({consecutive_bad} in a row)")
                if consecutive_bad >= cfg.faults.max_consecutive_nonfinite:
                    metrics.close()
                    raise CptlabError(
                        f"training stopped at step {step}: {consecutive_bad} steps in a row with a non-finite loss "
                        f"or gradient (faults.max_consecutive_nonfinite = {cfg.faults.max_consecutive_nonfinite}); "
                        f"lower optimizer.lr, use precision fp32/bf16, or check the data. Resume from the last "
                        f"checkpoint with --resume after changing the config")
            if spike:
                log(f"step {step}: loss spike (loss {loss_v:.4f}, z = {z:.1f})")
            if step % cfg.log_interval == 0 or step == total_steps:
                now = time.time()
                tps = (tokens - tokens_last) / max(now - t_last, 1e-9)
                t_last, tokens_last = now, tokens
                bar.update(task, completed=step, loss=f"{loss_v:.4f}", tps=f"{tps:,.0f}")
            if step in kill_steps:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: a real kill, not an exception
            if cfg.eval.interval and step % cfg.eval.interval == 0 or (step == total_steps and cfg.eval.at_end):
                run_eval(step)
            if step in ckpt_steps:
                save(step)

    # ---- export: a plain HF dir (LoRA merged) + what it was trained on
    final = out / "final"
    accelerator.wait_for_everyone()
    unwrapped = plain_model()
    if is_main:
        import json

        from cptlab.model import save_model

        info = {"kind": "sft" if sft else "cpt", "step": step, "tokens": tokens,
                "tokens_by_source": sampler.tokens_by_source, "epochs_by_source": sampler.epochs_by_source}
        if sft:
            info["target_tokens"] = sampler.targets_seen
        save_model(unwrapped, tokenizer, final, extra_files={"cptlab_train.json": json.dumps(info, indent=2).encode()})
    accelerator.wait_for_everyone()
    metrics.close()
    elapsed = time.time() - t_start
    log(f"done: {step} steps, {tokens:,} tokens, last loss {last_loss if last_loss is None else round(last_loss, 4)}"
        f", {elapsed:.0f} s; epochs by source: "
        + ", ".join(f"{k} {v:.2f}" for k, v in sampler.epochs_by_source.items()) + f"; model in {final}")
    return TrainResult(out, final, step, tokens, last_loss, out / "metrics.jsonl", skipped_total, is_main)
