"""Counting a step's FLOPs (for benchmarks' MFU figures) without losing its compiled parts."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def count_flops(step: Callable[[], T]) -> tuple[float, T]:
    """(matmul/conv FLOPs as torch.utils.flop_counter counts them, what `step` returned) of one call
    of `step`, which runs eager. Under
    the counter dynamo will not run a compiled part, and torch 2.13 then marks the part's code as
    skipped for good: every later step would run it eager (a compiled run measured as an eager one).
    Forcing the compiler's stance to eager for the counted call keeps dynamo out of it, so the
    compiled code is used again afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        result = step()
    return float(counter.get_total_flops()), result
