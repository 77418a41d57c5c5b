"""Training state on disk as safetensors and JSON, so that resuming a run loads no pickles.

A torch optimiser's ``state_dict`` mixes tensors (AdamW's moments and step counts) with plain values (its
parameter groups); ``split_optimizer`` separates them into a flat tensor map for safetensors and a JSON-ready
dict, and ``restore_optimizer`` puts them back. The learning-rate schedule's state is plain (a lambda schedule
stores no functions), so it travels in the JSON part too.
"""

from __future__ import annotations

from typing import Any


def cpu_copies(tensors: dict[str, Any]) -> dict[str, Any]:
    """Contiguous CPU copies that share no storage (safetensors refuses shared tensors)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def split_optimizer(optimizer: Any, scheduler: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The optimiser's and schedule's state as (tensors named ``<param index>.<slot>``, JSON-ready dict)."""
    import torch

    state = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            (tensors if torch.is_tensor(value) else scalars)[f"{index}.{key}"] = value
    return cpu_copies(tensors), {"param_groups": state["param_groups"], "scalars": scalars,
                                 "scheduler": scheduler.state_dict()}


def restore_optimizer(optimizer: Any, scheduler: Any, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """Load what :func:`split_optimizer` saved back into a freshly built optimiser and schedule."""
    slots: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, _, key = name.partition(".")
        slots.setdefault(int(index), {})[key] = value
    # JSON has no tuples; AdamW's betas were one
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": slots, "param_groups": groups})
    scheduler.load_state_dict(meta["scheduler"])
