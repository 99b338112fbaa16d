"""Clean interruption: the first SIGTERM/SIGINT asks the loop to checkpoint and stop at the next
step boundary; a second one exits at once (exit code 128 + signal number)."""

from __future__ import annotations

import os
import signal
import sys


class StopFlag:
    """Set by SIGTERM/SIGINT; the training loop polls ``requested`` between optimizer steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            sys.stderr.write(f"\nsecond signal {signum}: exiting now without a checkpoint\n")
            os._exit(128 + signum)
        self.signum = signum
        sys.stderr.write(f"\nsignal {signum}: saving a checkpoint at the end of this step, "
                         "send it again to exit at once\n")

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): no handler
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
