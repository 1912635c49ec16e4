"""SIGINT/SIGTERM during training: a request to stop cleanly after the current step."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Callable

log = logging.getLogger(__name__)


class StopSignal:
    """Catches SIGINT and SIGTERM while :meth:`handled` is active: the first sets
    :attr:`received` (the training loop checks it after each step, writes last.pt and raises
    :class:`~mtl_train.errors.RunInterrupted`); a second acts at once, as without a handler."""

    def __init__(self):
        self.received: int | None = None  # the number of the first signal caught

    @contextlib.contextmanager
    def handled(self, current_step: Callable[[], int]):
        """Install the handlers (in the main thread only; elsewhere signals are left alone) and
        restore the previous ones on exit. ``current_step()`` is the 1-based step being run,
        named in the warning."""
        def handler(signum, frame):
            if self.received is not None:  # second signal: stop now
                signal.signal(signum, signal.SIG_DFL)
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signum)
                return
            self.received = signum
            log.warning("%s received: finishing step %d, then writing a checkpoint (again to stop now)",
                        signal.Signals(signum).name, current_step())

        previous = {}
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                previous[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
