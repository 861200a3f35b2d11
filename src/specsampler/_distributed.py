"""Multi-process runs (``torchrun``, transformers' tensor parallelism): one run seed shared by every rank.

Under tensor parallelism each rank runs :func:`specsampler.generate` with the same inputs and must emit the same
tokens: the ranks' forwards are kept in step by the model's collectives, so a rank that took another token would
desynchronise them. Every random draw of a run derives from one seed; :func:`run_seed` makes it the same everywhere,
and :func:`rank0_choice` gives every rank rank 0's value of a choice each rank measures for itself (the "cost"
schedule's draft length).
"""

from __future__ import annotations

import torch

__all__ = ["rank0_choice", "run_seed", "sharded"]

_SEED_BOUND = 2**62


def _process_group_size() -> int:
    """The default process group's world size; 1 when torch.distributed is missing or not initialized."""
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size()


def _broadcast_device() -> torch.device:
    """Where the broadcast tensor must live for the default group's backend: the CPU for gloo and MPI (and the CPU
    half of a ``"cpu:gloo,cuda:nccl"`` group), the current CUDA device for NCCL (it takes no CPU tensor), the current
    accelerator for another device backend (XCCL, HCCL, ...)."""
    backend = str(torch.distributed.get_backend()).lower()
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        return torch.device(accelerator.current_accelerator().type, accelerator.current_device_index())
    return torch.device("cpu")


def sharded(model) -> bool:
    """Whether transformers split `model` across ranks (tensor parallelism, ``tp_plan``; or FSDP): its ``tp_size`` or
    ``fsdp_size`` is above 1 (None or absent when it was loaded whole)."""
    return any((getattr(model, name, None) or 1) > 1 for name in ("tp_size", "fsdp_size"))


def run_seed(seed: int | None, model=None) -> int:
    """The seed of one generate call, the same on every rank of a run whose target is split across ranks.

    Parameters
    ----------
    seed : int or None
        The caller's seed, returned as given (every rank is expected to pass the same one). None: a seed in
        [0, 2**62) is drawn from torch's default generator; when `model` is split across ranks (:func:`sharded`) and
        ``torch.distributed`` is initialized with a world size above 1, rank 0 draws it and broadcasts it over the
        default group (one broadcast, on the CPU for gloo, on the current CUDA device for NCCL), so every rank gets
        rank 0's draw.
    model : transformers.PreTrainedModel, optional
        The target. A whole model on every rank (data parallelism: other prompts per rank) keeps its own draw: no
        collective, and the ranks stay independent.

    Returns
    -------
    int
        The run seed.

    Notes
    -----
    With seed=None and a split target this is a collective: every rank of the default group must call it, as every
    rank must call ``generate`` (with the same inputs) under tensor parallelism anyway. Ranks other than 0 do not draw
    from their generator then. Outside a distributed run the draw is what it always was, one
    ``torch.randint`` from the default generator (so ``torch.manual_seed`` still makes a run reproducible).
    """
    if seed is not None:
        return seed
    if not _split(model):
        return int(torch.randint(0, _SEED_BOUND, ()))
    return _from_rank0(int(torch.randint(0, _SEED_BOUND, ())) if torch.distributed.get_rank() == 0 else 0)


def rank0_choice(value: int, model=None) -> int:
    """`value` as rank 0 has it, on every rank, when `model` is split across ranks (a collective: every rank calls it
    at the same point); `value` itself otherwise. For choices that change the shape of the next forward and come from
    each rank's own measurements (the "cost" draft-length schedule)."""
    return _from_rank0(value) if _split(model) else value


def _split(model) -> bool:
    return _process_group_size() > 1 and sharded(model)


def _from_rank0(value: int) -> int:
    """Broadcast rank 0's int `value` over the default group (on the CPU for gloo, the current CUDA device for NCCL)."""
    tensor = torch.tensor([value], dtype=torch.int64).to(_broadcast_device())
    torch.distributed.broadcast(tensor, src=0)
    return int(tensor.item())
