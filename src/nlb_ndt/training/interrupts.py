"""Stopping a run cleanly: Ctrl-C, SIGTERM, a deadline, or a caller's request.

The trainer asks `StopRequest.due` at the end of every epoch; when it says stop, the run
saves its state for that epoch and returns, so starting it again continues from there. A
deadline (a search's time budget) stops a run only at a validation, so the run reports
the metrics it stopped at. `stop_on_signals` turns the first SIGINT or SIGTERM (Ctrl-C in
`screen`, a scheduler's preemption notice) into such a request; a second one stops at
once, as the default handlers would. Signal handlers can only be installed from the main thread (a
Ray trial runs in another), so elsewhere it installs nothing and the caller polls.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Callable, Iterator

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The reason a run past its deadline gives.
BUDGET_SPENT = "the time budget is spent"


class StopRequest:
    """Whether a run should stop at the end of its current epoch, and why.

    Args:
        deadline: a `time.time()` after which the run stops (a search's time budget).
        poll: called at each check; True asks to stop (e.g. Ray stopping the trial).
    """

    def __init__(self, *, deadline: float | None = None,
                 poll: Callable[[], bool] | None = None):
        self.deadline = deadline
        self.poll = poll
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    @property
    def requested(self) -> bool:
        """A signal or the caller's poll asked to stop (the deadline is not looked at)."""
        if self.reason is None and self.poll is not None and self.poll():
            self.request("stop requested")
        return self.reason is not None

    def due(self, *, validated: bool) -> bool:
        """Whether to stop after this epoch: on any request, or past the deadline at an
        epoch that `validated`."""
        if not self.requested and validated and self.deadline is not None and \
                time.time() >= self.deadline:
            self.request(BUDGET_SPENT)
        return self.reason is not None


@contextlib.contextmanager
def stop_on_signals(request: StopRequest) -> Iterator[StopRequest]:
    """While inside, SIGINT / SIGTERM set `request` (first) or stop at once (second)."""
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if request.reason is not None:
            logger.warning("%s again: stopping now, without saving", name)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        request.request(f"{name} received")
        logger.warning("%s: saving the state at the end of this epoch, then stopping "
                       "(send it again to stop at once)", name)

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
