"""Intermediate reports from a running trial to whoever runs it (the study's driver).

A trial calls :func:`report` as it goes — the training loss after every step (``"loss"``) and a
held-out evaluation at checkpoints (``"eval"``, step 0 being right after initialisation). The
executor that runs the trial installs the receiver with :func:`reporting_to`: in a Ray worker it
forwards each report to the driver (`automix.study.executors`), in the driver's own process it
calls the driver directly. Without a receiver, reports go nowhere (``automix trial``).

The driver may answer a report with "stop" (a pruner decided the trial is hopeless). In the
driver's process that raises :class:`TrialStopped` inside the trial; in a Ray worker the driver
cancels the task. Either way the trial ends where it is, without a result: the driver already
holds the curve it was judged on.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

__all__ = ["Receiver", "TrialStopped", "report", "reporting_to"]

Receiver = Callable[[str, int, float], bool]  # (kind, step, value) -> stop the trial?

_receiver: contextvars.ContextVar[Receiver | None] = contextvars.ContextVar("automix_trial_receiver",
                                                                            default=None)


class TrialStopped(BaseException):
    """Raised inside a trial that its driver stopped early (a BaseException, like
    KeyboardInterrupt, so a trial's own error handling never records it as a failure)."""


def report(kind: str, step: int, value: float) -> None:
    """Send one intermediate value; raises :class:`TrialStopped` when the receiver says stop."""
    receiver = _receiver.get()
    if receiver is not None and receiver(kind, int(step), float(value)):
        raise TrialStopped(f"stopped by the driver at step {step} ({kind} {value:.6g})")


@contextlib.contextmanager
def reporting_to(receiver: Receiver | None) -> Iterator[None]:
    """Deliver the :func:`report` calls made inside this block to ``receiver``."""
    token = _receiver.set(receiver)
    try:
        yield
    finally:
        _receiver.reset(token)
