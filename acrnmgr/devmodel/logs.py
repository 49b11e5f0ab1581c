"""Rate-limited logging for the device model.

A hostile front-end or guest can make the same thing go wrong thousands of times a second (a kick fd at EOF,
a call fd that fails, a ring it breaks over and over); each of those is worth a log line, but not each time.
Every devmodel module logs through :func:`get_logger`, whose logger carries one shared :class:`RateLimit`:
per message template, at most ``burst`` records per ``period`` seconds; the first record let through after a
quiet spell says how many were suppressed in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RATE_LIMIT", "RateLimit", "get_logger"]


class RateLimit(logging.Filter):
    """Let through at most ``burst`` records with the same (logger, level, template) per ``period`` seconds.
    The template is the format string, and its first argument when that is a short string."""

    MAX_KEYS = 1024  # templates tracked at once (they are the source's format strings: few in practice)

    def __init__(self, burst: int = 10, period: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self.clock = clock
        # key -> [window start, records let through in it, records suppressed in it]
        self._windows: dict[tuple[str, int, str], list[float]] = {}
        self.suppressed = 0  # total, for tests and statistics

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, self._template(record))
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.period:
            if window is None and len(self._windows) >= self.MAX_KEYS:
                self._expire(now)
            dropped = int(window[2]) if window is not None else 0
            self._windows[key] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.msg} [{dropped} similar message(s) suppressed]"
            return True
        if window[1] < self.burst:
            window[1] += 1
            return True
        window[2] += 1
        self.suppressed += 1
        return False

    @staticmethod
    def _template(record: logging.LogRecord) -> str:
        """The format string, with a leading string argument (a request name: "vhost-user %s failed") as part
        of it, so that one request failing over and over does not hide the others."""
        template = str(record.msg)
        args = record.args
        if isinstance(args, tuple) and args and isinstance(args[0], str) and len(args[0]) <= 32:
            template = f"{template}\0{args[0]}"
        return template

    def _expire(self, now: float) -> None:
        for key in [k for k, w in self._windows.items() if now - w[0] >= self.period]:
            del self._windows[key]
        if len(self._windows) >= self.MAX_KEYS:  # all busy: forget the lot rather than grow without bound
            self._windows.clear()


RATE_LIMIT = RateLimit()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the devmodel's shared rate limit attached (once)."""
    logger = logging.getLogger(name)
    if RATE_LIMIT not in logger.filters:
        logger.addFilter(RATE_LIMIT)
    return logger
