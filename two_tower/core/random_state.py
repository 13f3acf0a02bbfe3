"""The caller's random generators kept across one call: ``train()`` seeds Python's ``random``, numpy's and torch's
global generators (Lightning's ``seed_everything``), which a caller in the same process (a notebook that trains, then
samples or shuffles) would otherwise find reseeded to the run's seed and advanced by the run."""

from __future__ import annotations

import contextlib
import random


@contextlib.contextmanager
def kept():
    """Python's, numpy's and torch's global generators (CPU, and every CUDA device) as they were before the block.
    CUDA not initialised before the block is seeded when it is first used (inside the block or after it) with the
    latest seed torch.manual_seed gave, which the block's seed_everything made the run's: afterwards, the caller's."""
    import numpy as np
    import torch

    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state, torch_seed = torch.get_rng_state(), torch.initial_seed()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # what torch.manual_seed queued for CUDA's first use (or seeds now, if the block initialised it)
            torch.cuda.manual_seed_all(torch_seed)
