"""Host-to-device copies that never wait for the device queue.

A copy from pageable memory makes CUDA wait until every queued kernel has run, which would
stall the host behind the step in flight. Copies go through pinned buffers instead, reused in
a ring; each buffer waits only for its own previous copy. The ring must span more than two
steps' copies (a step makes up to three: inputs, temperatures, seeds): a buffer whose last
copy was queued behind the step in flight would make the host wait for that step.
"""

from __future__ import annotations

import numpy as np
import torch


class PinnedStager:
    def __init__(self, device: torch.device, ring: int = 16):
        self.device = device
        self._buffers: list[torch.Tensor | None] = [None] * ring
        self._events: list[torch.cuda.Event | None] = [None] * ring
        self._next = 0

    def copy(self, host: np.ndarray) -> torch.Tensor:
        """Queues a copy of `host` (any dtype, any shape) and returns the device tensor."""
        i, self._next = self._next, (self._next + 1) % len(self._buffers)
        event = self._events[i]
        if event is not None:
            event.synchronize()  # the buffer's previous copy has read it
        src = torch.from_numpy(np.ascontiguousarray(host))
        nbytes = src.numel() * src.element_size()
        buf = self._buffers[i]
        if buf is None or buf.numel() < nbytes:
            size = max(nbytes, 2 * (buf.numel() if buf is not None else 0), 4096)
            buf = self._buffers[i] = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        staged = buf[:nbytes].view(src.dtype).view(src.shape)
        staged.copy_(src)
        dev = staged.to(self.device, non_blocking=True)
        event = self._events[i] = torch.cuda.Event()
        event.record()
        return dev
