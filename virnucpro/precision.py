"""TF32 scoped to the forward pass that asked for it (the flags are process-global, not per thread).

``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` are read by
every thread when it launches a float32 matmul or convolution.  A DNA forward in ``tf32``
holds :data:`FLAGS_LOCK` while the flags are on; float32 work in another thread (the
classifier in the writer thread) takes the same lock with the flags off, so it never runs in
TF32 whatever the timing.  The lock is held while kernels are launched only, which on CUDA
is asynchronous, so the classifier waits for at most one DNA batch.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

#: Held by whoever sets the TF32 flags for a scope (re-entrant: scopes may nest in one thread).
FLAGS_LOCK = threading.RLock()


def tf32_flags() -> tuple[bool, bool]:
    """The current (cuBLAS matmul, cuDNN) TF32 flags."""
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@contextlib.contextmanager
def tf32_scope(enabled: bool) -> Iterator[None]:
    """Run the body with both TF32 flags set to ``enabled``, restored after; no other scope overlaps it."""
    with FLAGS_LOCK:
        saved = tf32_flags()
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
