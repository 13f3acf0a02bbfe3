"""The running process group (DDP), as the model and the training callbacks ask about it: how many processes, which
one this is, and each process's part of what a checkpoint holds.

A checkpoint is written by rank 0, but every process dumps it (Lightning's ``dump_checkpoint``), so a value that
differs between processes (RNG states, the epoch's running sums) can be gathered there into ``{..rank 0's.., "ranks":
[each process's]}``, and each process takes back its own on resume (``own_part``).
"""

from __future__ import annotations

import sys


def world_size() -> int:
    """The number of processes of the running process group (1 without one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the running process group (0 without one)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_zero_value(value):
    """``value`` as rank 0 has it, in every process (one broadcast; ``value`` itself with one process): for what every
    process must decide alike although each looks for itself, e.g. which files are there where each node has a disk of
    its own. Every process must call it at the same point."""
    if world_size() < 2:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered_for_checkpoint(own: dict) -> dict:
    """``own`` with ``"ranks"``: every process's ``own`` (a gather, while the checkpoint is dumped); ``own`` alone with
    one process, or while Ctrl-C is handled (the processes stopped wherever each was, and a gather there hung the run:
    rank 0's alone then)."""
    world = world_size()
    if world < 2 or isinstance(sys.exc_info()[1], KeyboardInterrupt):
        return own
    import torch.distributed as dist

    ranks = [None] * world
    dist.all_gather_object(ranks, own)
    return {**ranks[0], "ranks": ranks}


def own_part(saved: dict) -> dict:
    """This process's part of what ``gathered_for_checkpoint`` saved: its ``ranks`` entry, or the saved value itself
    (one process saved it, it was saved at Ctrl-C, or this run has more processes than the one that saved it)."""
    ranks, here = saved.get("ranks"), rank()
    return ranks[here] if ranks and here < len(ranks) else saved
