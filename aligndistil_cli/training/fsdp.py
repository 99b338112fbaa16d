"""FSDP2 (``fully_shard``) for the trained model: sharding, the gradient convention, full state dicts.

Only the trained model is sharded. Teachers, the DPO reference and the live DPO / negative models
stay replicated (each rank holds a frozen copy): they are inference-only, so they have no gradients
or optimizer state to shard, and sharding them would add an all-gather per forward.

Choices worth knowing:
- Each decoder layer is an FSDP unit, then the root (embeddings, final norm, head): one layer's
  full weights exist at a time. Code must call the *root* forward (``model(...)``); calling the
  decoder or the head weight directly skips the root unit's hooks and sees sharded tensors.
- ``TrainLoop`` sums gradients over ranks (each rank's loss is already divided by the global
  batch). FSDP divides by the world size by default, so its divide factor is set to 1 and its
  reductions are forced to plain SUM (a custom factor otherwise needs PREMUL_SUM, which gloo lacks).
- Checkpoints and the final model are one consolidated Hugging Face folder: the full state dict
  is gathered to rank 0's CPU and saved from an unsharded copy built on the meta device (no second
  allocation). The optimizer state is saved in the plain ``torch.optim`` layout (parameter index
  keys), so a checkpoint resumes with or without FSDP and with any process count.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from aligndistil_cli.errors import AlignDistilError

# torch.distributed.fsdp / .checkpoint are imported inside the functions: together they add
# about a second to every start, and only --fsdp runs need them.


def _full(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model`` in place (each decoder layer, then the root) and return it."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    layers = getattr(model.get_decoder(), "layers", None) if hasattr(model, "get_decoder") else None
    if layers is None:
        raise AlignDistilError(f"--fsdp: {type(model).__name__} has no decoder layer list to shard",
                               "use a standard Hugging Face *ForCausalLM model, or drop --fsdp")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    # transformers' own FSDP marker: generate() then runs with synced_gpus, so a rank whose
    # samples all ended keeps joining the other ranks' forwards (each forward all-gathers).
    model._is_fsdp_managed_module = True
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")  # never imported: nothing was sharded
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """The full value of a DTensor (a collective; clip_grad_norm_ returns one under FSDP), or
    the tensor itself."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict on rank 0's CPU ({} on other ranks). A collective: call on every rank."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full(cpu_offload=True))


def unwrapped_class(model: torch.nn.Module) -> type:
    """The model's own class (fully_shard swaps in a subclass named FSDP<Class>)."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def plain_copy(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """An unsharded model of the same class holding ``state``, for ``save_pretrained``.

    Built on the meta device and filled with ``assign=True``: the tensors of ``state`` are used
    as they are. Non-persistent buffers (rotary tables) stay on meta: the copy saves, it does
    not run.
    """
    with torch.device("meta"):
        plain = unwrapped_class(model)(model.config)
    plain.load_state_dict(state, strict=False, assign=True)
    plain.generation_config = model.generation_config
    if getattr(model.config, "tie_word_embeddings", False):
        plain.tie_weights()
    return plain


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state in ``optimizer.state_dict()`` layout, full, on rank 0 ({} on other
    ranks). A collective: call on every rank."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    named = get_optimizer_state_dict(model, optimizer, options=_full(cpu_offload=True))
    if not named:
        return {}
    names = [n for group in named["param_groups"] for n in group["params"]]
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[n]: v for n, v in named["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in named["param_groups"]]}


def load_full_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]):
    """Load full (unsharded) weights into the sharded model; every rank passes the same dict and
    keeps its shard. Returns missing / unexpected keys like ``load_state_dict(strict=False)``."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    return set_model_state_dict(model, weights, options=_full(strict=False))


def load_full_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        optim_state: dict[str, Any]) -> None:
    """Load a plain-layout (parameter index keyed) full optimizer state into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    fqn = {id(p): n for n, p in model.named_parameters()}
    names = [fqn[id(p)] for group in optimizer.param_groups for p in group["params"]]
    named = {"state": {names[int(i)]: v for i, v in optim_state["state"].items()},
             "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                              for g in optim_state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, named, options=_full())
