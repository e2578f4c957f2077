"""The app's login check, slowed down after failures so a password cannot be guessed quickly.

Gradio calls the check with the user name and password only (no client address), so failures
are counted for the whole app. After ``free_failures`` failures in a row, every attempt must
wait a cool-down that doubles with each further failure (up to ``max_wait`` seconds); an
attempt that comes during a cool-down is refused without its password being looked at, so
guesses sent in parallel or in a burst gain nothing. A correct login ends the cool-downs.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable


class LoginThrottle:
    """A ``(username, password) -> bool`` for ``gr.Blocks.launch(auth=...)``."""

    def __init__(
        self,
        username: str,
        password: str,
        *,
        free_failures: int = 5,
        first_wait: float = 1.0,
        max_wait: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._user = username.encode("utf-8")
        self._password = password.encode("utf-8")
        self.free_failures = free_failures
        self.first_wait = first_wait
        self.max_wait = max_wait
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0  # failures in a row
        self.refused = 0  # attempts refused during a cool-down (never checked)
        self._open_at = 0.0  # no attempt is checked before this time

    def wait_left(self) -> float:
        """Seconds until the next attempt is looked at (0: now)."""
        with self._lock:
            return max(0.0, self._open_at - self._clock())

    def check(self, username: str, password: str) -> bool:
        with self._lock:
            now = self._clock()
            if now < self._open_at:
                self.refused += 1
                return False
            ok = hmac.compare_digest(username.encode("utf-8"), self._user) & hmac.compare_digest(
                password.encode("utf-8"), self._password)
            if ok:
                self.failures = 0
                self._open_at = 0.0
                return True
            self.failures += 1
            if self.failures >= self.free_failures:
                k = self.failures - self.free_failures
                self._open_at = now + min(self.max_wait, self.first_wait * 2.0**k)
            return False

    # Synchronous on purpose: Gradio awaits the check only when inspect.iscoroutinefunction(auth)
    # says so, which it does not for an object whose __call__ is async; the coroutine object it
    # then got would count as true, and let anyone in.
    def __call__(self, username: str, password: str) -> bool:
        return self.check(username, password)


__all__ = ["LoginThrottle"]
