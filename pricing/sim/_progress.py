"""A throttled one-line status display for long runs (stderr), silent when given no stream."""

from __future__ import annotations

import time
from typing import Callable, TextIO


class Progress:
    """Rewrites one line on a terminal; on a pipe or file prints a line every few seconds instead.

    Throttled so that progress never costs measurable time in vectorized loops.
    """

    def __init__(
        self, stream: TextIO | None, *, every_s: float = 0.5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self._every = every_s if self._tty else max(every_s, 5.0)
        self._last = clock()  # short runs stay quiet: the first unforced update waits one interval
        self._width = 0

    def update(self, text: str, *, force: bool = False) -> None:
        """Show ``text`` unless the previous update was too recent (``force`` shows it anyway)."""
        if self._stream is None:
            return
        now = self._clock()
        if not force and now - self._last < self._every:
            return
        self._last = now
        if self._tty:
            self._stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def clear(self) -> None:
        """End the status line so that the next output starts on a fresh line."""
        if self._stream is not None and self._tty and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0
