"""Wake-ups for live feed readers: "the log may have grown, read it again".

`FeedSignal` is a thread-safe broadcaster. Writers (the service's
`on_append` hook, the PostgreSQL wake probe) call `notify()` from any
thread; each stream reader holds a `FeedSubscription` and awaits it on its
own event loop. A wake-up carries no data: readers always go back to the
database, which alone knows what is visible (`Backend.feed_visible`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

#: How long an idle reader sleeps between reads when nothing wakes it: the
#: database is never polled faster than this by a reader with nothing to do.
IDLE_POLL_SECONDS = 1.0


class FeedSubscription:
    """One reader's wake-up flag, bound to the event loop that created it.

    Use it as a context manager so that it is unregistered whatever ends
    the reader: the end of the stream, a client disconnect (cancellation) or
    an error.
    """

    def __init__(self, signal: FeedSignal, loop: asyncio.AbstractEventLoop) -> None:
        self._signal = signal
        self._loop = loop
        # asyncio.Event is not thread-safe: it is only ever set through
        # `loop.call_soon_threadsafe`, so that it is touched on its own loop.
        self._event = asyncio.Event()

    @property
    def closed(self) -> bool:
        """True once the signal is closed (app shutdown): the reader should stop."""
        return self._signal.closed

    def _wake(self) -> None:
        # RuntimeError: the loop is closed, so its reader is gone and will
        # unregister (or already has). A writer's commit must never fail for it.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """Sleep until notified or `timeout` seconds pass; True if notified.

        The flag is cleared on return, before the caller reads again, so a
        notification that arrives during that read is not lost: it makes the
        next `wait` return at once.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True

    def close(self) -> None:
        self._signal._unsubscribe(self)

    def __enter__(self) -> FeedSubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FeedSignal:
    """Broadcasts "the log may have grown" to every subscribed reader."""

    def __init__(self) -> None:
        # Guards `_subscribers`: notify() runs on writer threads while
        # readers come and go on the event loop.
        self._lock = threading.Lock()
        self._subscribers: set[FeedSubscription] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribe(self) -> FeedSubscription:
        """A new subscription on the running event loop (call it from a coroutine)."""
        sub = FeedSubscription(self, asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(sub)
        return sub

    def _unsubscribe(self, sub: FeedSubscription) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def notify(self) -> None:
        """Wake every reader. Callable from any thread; never blocks on a reader."""
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            sub._wake()

    def close(self) -> None:
        """Shutdown: wake every reader for the last time; `closed` tells them to stop."""
        self._closed = True
        self.notify()
