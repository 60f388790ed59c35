"""FSDP: the model's parameters, gradients and optimizer state sharded over the processes (torch's `fully_shard`).

cptlab shards the model itself instead of through accelerate's FSDP plugin: accelerate turns FSDP on only on
accelerators, and this way one code path runs on GPUs and on CPU (gloo), where the tests check it against one
process. Each decoder block is one FSDP unit (its weights are gathered for its forward and backward and freed
after); the loss module is the root unit (embeddings, final norm, output layer: the chunked loss reads the output
weight inside the root's forward, so it is gathered there).

Checkpoints stay what they are without FSDP: a plain HF model dir written by the main process, whatever the
number of processes. Gathering the full weights and optimizer state is collective (every rank calls it); the full
tensors land on the main process's CPU. The optimizer state is stored by parameter name ("fqn"), so a checkpoint
written with FSDP resumes without it and the other way round (`optimizer_state_by_name` / `by_index`).
"""

from __future__ import annotations

from cptlab.errors import CptlabError


def decoder_blocks(model):
    """The model's list of decoder blocks (`layers`, `h` or `blocks` of the decoder), or None."""
    import torch

    from cptlab.train.loss import causal_lm_parts

    decoder, _ = causal_lm_parts(model)
    for name in ("layers", "h", "blocks"):
        blocks = getattr(decoder, name, None)
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks):
            return blocks
    return None


def shard(loss_module):
    """Shard `loss_module` (a CausalLMLoss) in place over the default process group: one unit per block + root."""
    from torch.distributed.fsdp import fully_shard

    blocks = decoder_blocks(loss_module.model)
    if blocks is None:
        raise CptlabError(f"fsdp: {type(loss_module.model).__name__} has no list of decoder blocks (layers/h/blocks) "
                          f"to shard; set fsdp: false (DDP)")
    for block in blocks:
        fully_shard(block)
    fully_shard(loss_module)
    return loss_module


def shard_fraction(model) -> float:
    """The share of the model's parameter elements this rank holds (1 / world for evenly divisible shapes)."""
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
    return local / max(1, sum(p.numel() for p in model.parameters()))


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model) -> dict:
    """Collective: the full weights by name, on the main process's CPU ({} on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def full_optimizer_state(model, optimizer) -> dict:
    """Collective: the full optimizer state keyed by parameter name, on the main process's CPU ({} elsewhere)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options())


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Every rank passes the full state (by name or by index); each keeps its own shard of it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optimizer_state_by_name(state, model, optimizer),
                             options=StateDictOptions(full_state_dict=True))


def host_copy(model, state: dict):
    """An unsharded copy of `model` on the CPU holding `state` (no copy of the tensors), for saving as an HF dir."""
    import copy

    import torch

    with torch.device("meta"):
        plain = type(model)(copy.deepcopy(model.config))
    _, unexpected = plain.load_state_dict(state, strict=False, assign=True)  # (tied weights: missing until tied)
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    still = [n for n, p in plain.named_parameters() if p.is_meta]
    if still or unexpected:
        raise CptlabError(f"fsdp: gathered weights do not fit the model (missing {still[:4]}, unexpected "
                          f"{unexpected[:4]})")
    for name, buf in list(plain.named_buffers()):
        if buf.is_meta:  # non-persistent buffers (rotary frequencies) are not in a state dict: take the model's
            owner, _, leaf = name.rpartition(".")
            plain.get_submodule(owner).register_buffer(leaf, model.get_buffer(name).detach().cpu(), persistent=False)
    return plain.eval()


def _names(model, optimizer) -> list[str]:
    """Parameter names in the order the optimizer numbers them (group by group)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    try:
        return [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]
    except KeyError:
        raise CptlabError("optimizer: holds a parameter that is not the model's") from None


def _keyed_by_name(state: dict) -> bool:
    return all(isinstance(p, str) for g in state.get("param_groups", []) for p in g["params"])


def _rekey(state: dict, key) -> dict:
    return {"state": {key[k]: s for k, s in state["state"].items()},
            "param_groups": [{**g, "params": [key[k] for k in g["params"]]} for g in state["param_groups"]]}


def optimizer_state_by_name(state: dict, model, optimizer) -> dict:
    """An optimizer state dict keyed by index (`optimizer.state_dict()`) re-keyed by parameter name."""
    return state if _keyed_by_name(state) else _rekey(state, _names(model, optimizer))


def optimizer_state_by_index(state: dict, model, optimizer) -> dict:
    """An optimizer state dict keyed by parameter name re-keyed by index, for `optimizer.load_state_dict`."""
    if not _keyed_by_name(state):
        return state
    try:
        return _rekey(state, {n: i for i, n in enumerate(_names(model, optimizer))})
    except KeyError as e:
        raise CptlabError(f"optimizer state: parameter {e.args[0]} is not in this model") from None
