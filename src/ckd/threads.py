"""The thread rule, in one place (docs/performance.md, "Threads").

PyTorch runs an operation on all its intra-op threads once it is large enough to split (a few
tens of thousands of elements), and every such operation is an OpenMP parallel region: the
calling thread waits at its end for every worker. On an idle machine that costs microseconds;
on a loaded one a worker that the scheduler has parked makes every region wait for a time slice,
and OpenMP's default wait policy (spin before sleeping) burns the cores the other work needs.
A loop of thousands of small operations -- the sequential part of the chunked delta rule, a
rollout, the selection of a forecast's settings, a streaming push, Gauss-Seidel sweeps on a small
system, a training step of a small model -- then runs 5-100x slower under load than idle, while
the same loop on one thread loses little or nothing idle (measured: ``benchmarks/perf.py
--under-load``).

The rule: work whose largest single operation is below ``SMALL_FLOPS`` floating-point operations
runs on one thread (``threads_for(flops)``, ``small_ops()``); larger work keeps every thread
(large GEMMs and factorisations do gain from them). The previous thread count is restored on
exit, exceptions included, and a count the caller set below the rule's is kept. The ``ckd``
command also sets ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported (unless set): users of
the Python API can set it themselves before ``import torch``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

SMALL_FLOPS = 2**28  # below: one thread (about 50-100 ms of one core; measured in docs/performance.md)


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Run the block with at most ``count`` intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    if count >= before:
        yield
        return
    torch.set_num_threads(max(1, int(count)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def small_ops() -> contextlib.AbstractContextManager:
    """One thread for a loop of small operations (the module doc's rule)."""
    return threads(1)


def threads_for(flops: float) -> contextlib.AbstractContextManager:
    """One thread when the largest operation of the block costs fewer than ``SMALL_FLOPS``
    floating-point operations, else every thread (the module doc's rule)."""
    return threads(1) if flops < SMALL_FLOPS else contextlib.nullcontext()
