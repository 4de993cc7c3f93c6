"""The compute device: which one to use, and running batched steps within its memory.

:func:`resolve_device` turns ``--device`` into a ``torch.device``. Sampling and embedding
both go through :class:`OomSplitter`. When a step runs out of device
memory, the splitter frees the allocator's cache, halves the chunk size and retries the chunk
that failed; the smaller size is kept for the rest of the run, so the cost of finding it is
paid once. Results are identical to an unsplit run because every step here is per-image (no
batch statistics: generators and embedders run in eval mode).
"""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

import numpy as np
import torch

from ganaudit.errors import GanauditError

log = logging.getLogger(__name__)

T = TypeVar("T", torch.Tensor, np.ndarray)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be present."""
    cuda, mps = torch.cuda.is_available(), getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps_ok else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps_ok):
        raise GanauditError(f"--device {name} was asked for but is not available here; use --device auto or cpu")
    return torch.device(name)


def is_out_of_memory(error: BaseException) -> bool:
    """True for a device allocator failure: CUDA's OutOfMemoryError, MPS's and older torch's RuntimeError."""
    oom_type = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_device_memory(device: torch.device) -> None:
    """Give cached blocks back to the device so that a smaller retry can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


class OomSplitter:
    """Calls ``fn`` on a batch in chunks no larger than the largest size known to fit.

    Usage::

        splitter = OomSplitter(device, "embedding")    # one per stage, kept for the run
        feats = splitter(embed_one_batch, images)      # same result as embed_one_batch(images)

    Args:
        device: where ``fn`` allocates (its cache is emptied before a retry).
        what: the stage, for log and error messages.
    """

    def __init__(self, device: torch.device, what: str):
        self.device = torch.device(device)
        self.what = what
        self.limit: int | None = None  # largest chunk that is allowed; None: not limited yet

    def __call__(self, fn: Callable[[T], T], batch: T) -> T:
        """``fn(batch)``, split into chunks along the first axis and concatenated back.

        Raises:
            GanauditError: out of memory even with one item per chunk.
        """
        n = len(batch)
        if n == 0:
            return fn(batch)
        size = n if self.limit is None else max(1, min(n, self.limit))
        parts, start = [], 0
        while start < n:
            try:
                parts.append(fn(batch[start:start + size]))
            except Exception as e:  # noqa: BLE001 - anything but OOM is re-raised untouched
                if not is_out_of_memory(e):
                    raise
            else:
                start += size
                continue
            # Outside the except block, so the traceback (and the tensors it holds) is released.
            if size == 1:
                raise GanauditError(
                    f"out of memory on {self.device} while {self.what}, even one image at a time; "
                    "free the device or use --device cpu"
                )
            size = max(1, size // 2)
            self.limit = size
            log.warning("out of memory on %s while %s; retrying with batches of %d", self.device, self.what, size)
            free_device_memory(self.device)
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)
