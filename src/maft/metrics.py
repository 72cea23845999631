"""Accuracy with standard error."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel


class Accuracy(BaseModel):
    """Mean accuracy over ``n`` problems with its standard error sqrt(var/n), as in the paper."""

    mean: float
    se: float
    n: int

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.se:.1f}"


def accuracy(scores: Sequence[float]) -> Accuracy:
    """``scores`` holds one value in [0, 1] per problem (0/1, or the mean over several samples)."""
    n = len(scores)
    if n == 0:
        raise ValueError("accuracy of zero problems is undefined")
    mean = sum(scores) / n
    var = sum((s - mean) ** 2 for s in scores) / n
    return Accuracy(mean=mean, se=math.sqrt(var / n), n=n)
