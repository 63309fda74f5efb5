"""Where tensors live: the one place that moves and casts them to a model's device and dtype.

The rule, everywhere in melbo_tl:

- **Inputs follow the model.** Token batches go to the device of the model's first parameter
  (:func:`to_model`); a tensor an intervention carries is cast to the device and dtype of the
  activations it meets, once per set of hooks (:class:`OnActivations`), so a vector may be given
  on any device and in any float dtype.
- **Trainable parameters stay float32** on the model's device (:func:`master_copy`): a bf16/fp16
  model trains an fp32 master copy of θ, cast when added; losses, norms and retractions are
  computed in float32.
- **Results come back as CPU float32** (:func:`to_result`): what a function returns or saves
  loads onto any device.

``tests`` and CUDA runs rely on this module being the only place with ``.to(device…)`` logic.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (where inputs and new tensors go)."""
    return next(model.parameters()).device


def module_device(module: Any) -> torch.device:
    """Where ``module`` (e.g. one block) computes. A model spread over devices with a
    ``device_map`` has accelerate hooks whose execution device says it (the weights of an
    offloaded block sit on "meta" until it runs); otherwise the device of its first parameter."""
    for sub in module.modules():
        device = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device)
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


def to_device(obj: Any, device: torch.device) -> Any:
    """Every tensor in ``obj`` (nested tuples, lists, dicts) on ``device``: what one block is
    handed when the blocks before it ran elsewhere."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def model_dtype(model: Any) -> torch.dtype:
    """The floating-point dtype the model computes in."""
    return next(model.parameters()).dtype


def to_model(tensor: Tensor, model: Any) -> Tensor:
    """An input (token ids, masks, indices) on the model's device; dtype unchanged."""
    return tensor.to(model_device(model))


def on_model(tensor: Tensor, model: Any) -> Tensor:
    """A float tensor (e.g. a vector handed to a model function) on the model's device, in its dtype."""
    return tensor.to(device=model_device(model), dtype=model_dtype(model))


def master_copy(tensor: Tensor, model: Any) -> Tensor:
    """A float32 copy on the model's device, for parameters an optimizer updates."""
    return tensor.detach().to(device=model_device(model), dtype=torch.float32).clone()


def to_result(tensor: Tensor) -> Tensor:
    """A detached CPU float32 tensor (integers keep their dtype), for results and artifacts."""
    tensor = tensor.detach()
    return tensor.cpu().float() if tensor.is_floating_point() else tensor.cpu()


def like(tensor: Tensor, acts: Tensor) -> Tensor:
    """``tensor`` on ``acts``' device and in its dtype (a no-op when it already is; differentiable)."""
    return tensor.to(device=acts.device, dtype=acts.dtype)


class OnActivations:
    """A tensor an intervention carries, cast to the activations' device and dtype on first use.

    Hook functions call ``placed.like(acts)``; the cast happens once per (device, dtype) for the
    lifetime of this object (one set of hooks), not once per hook call. A tensor that requires
    grad is cast on every call (each forward needs its own graph back to the parameter), and an
    in-place change (its version counter moves) invalidates the cached copy.
    """

    __slots__ = ("_cast", "tensor")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[int, Tensor]] = {}

    def like(self, acts: Tensor) -> Tensor:
        if self.tensor.requires_grad:
            return like(self.tensor, acts)
        key, version = (acts.device, acts.dtype), self.tensor._version
        cached = self._cast.get(key)
        if cached is None or cached[0] != version:
            cached = self._cast[key] = (version, like(self.tensor, acts))
        return cached[1]
