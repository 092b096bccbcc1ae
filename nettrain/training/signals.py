"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM.

A signal only sets a flag: the loop finishes the step in progress, writes
``last.npz`` and returns, and the exit code is 128 + the signal number. A second
signal while the first is pending raises KeyboardInterrupt at once (files stay
intact: every write is atomic).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class StopRequest:
    """A pending request to stop after the current step, by signal or by :meth:`request`."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask to stop; the first request's signal number is the one kept."""
        if self.signum is None:
            self.signum = int(signum)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.request(signum)

    @contextmanager
    def handling_signals(self, enabled: bool = True) -> Iterator["StopRequest"]:
        """SIGINT and SIGTERM set the flag inside the block; the previous handlers come back after it.

        Python delivers signals to the main thread only, so elsewhere (or when not
        ``enabled``) the handlers are left alone.
        """
        previous = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
