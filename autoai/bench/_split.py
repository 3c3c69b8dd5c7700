"""A step's load shared among N generator processes (pure).

Closed loop: the calls in flight are split as evenly as possible (32 over 8 processes is 4
each, 10 over 4 is 3, 3, 2, 2); every process needs at least one. Open loop: each process runs
its own Poisson stream at ``rate / N`` (the sum of independent Poisson streams is a Poisson
stream at the sum of their rates), and the in-flight limit is split like a concurrency.
"""

from __future__ import annotations

from ._report import Step

__all__ = ["shares", "split_step"]


def shares(total: int, n: int) -> list[int]:
    """``total`` as ``n`` integers that differ by at most one, the larger first.

    Raises:
        ValueError: ``n`` < 1 or ``total`` < ``n`` (a share would be 0).
    """
    if n < 1:
        raise ValueError(f"the number of processes must be >= 1, got {n}")
    if total < n:
        raise ValueError(f"{total} cannot be shared by {n} processes with at least 1 each")
    each, extra = divmod(total, n)
    return [each + 1 if i < extra else each for i in range(n)]


def split_step(step: Step, n: int) -> list[Step]:
    """The steps that ``n`` processes run together so that their sum is ``step``.

    Raises:
        ValueError: fewer calls in flight (closed loop) or a lower in-flight limit (open loop)
            than processes, or ``n`` < 1; the message says which.
    """
    if step.concurrency is not None:
        if step.concurrency < n:
            raise ValueError(
                f"concurrency {step.concurrency} is less than {n} processes: every generator "
                "process needs at least one call in flight"
            )
        return [Step(concurrency=c) for c in shares(step.concurrency, n)]
    assert step.rate is not None
    if step.max_in_flight < n:
        raise ValueError(
            f"the in-flight limit {step.max_in_flight} is less than {n} processes: every "
            "generator process needs at least one call in flight"
        )
    return [Step(rate=step.rate / n, max_in_flight=m) for m in shares(step.max_in_flight, n)]
