"""A client serves one event loop at a time.

Its limiters (requests in flight, rate limits) wake their waiters with the primitives of the waiter's
event loop, which another thread's loop cannot wake: calls from two loops at once (``optimize_sync`` in a
worker thread beside the app's loop, one client shared by two threads) would wait forever. One loop after
another is fine (``asyncio.run`` called again, trio after asyncio): the connections of a loop that ended
are let go (:mod:`aprompt.lm._http11`).
"""

from __future__ import annotations

import threading

from aprompt._errors import ConfigError
from aprompt.lm._loop_stream import running_loop

__all__ = ["LoopOwner"]


class LoopOwner:
    """The event loop whose calls a client has in flight: a call from another loop meanwhile is refused."""

    __slots__ = ("_calls", "_lock", "_loop")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: object = None
        self._calls = 0

    def enter(self, client: object) -> None:
        """Count a call of ``client`` (named in the error) of this loop in; pair it with :meth:`leave`.

        Raises:
            ConfigError: another event loop has calls of this client in flight.
        """
        loop = running_loop()
        with self._lock:
            if self._calls and self._loop is not loop:
                name = f"{type(client).__name__} for {getattr(client, 'model', '?')!r}"
                raise ConfigError(
                    f"{name} is in use on another event loop (another thread's): a client serves one "
                    "event loop at a time; give each thread that runs its own loop a client of its own"
                )
            self._loop = loop
            self._calls += 1

    def leave(self) -> None:
        with self._lock:
            self._calls -= 1
