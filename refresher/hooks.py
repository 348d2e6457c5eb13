"""Coroutine hooks: ``async def on_token_update(token)`` awaited on the caller's event loop.

The coordinator runs hooks in the thread that refreshes: for the async front ends
(:class:`refresher.httpx.RefreshingAuth`, :class:`refresher.aiohttp.RefreshingMiddleware`)
a worker thread, where calling a coroutine function only makes a coroutine nobody awaits.
:class:`AsyncHooks` wraps each coroutine-function hook so that calling it hands the
coroutine back to a loop:

- a refresh a request waited for (:class:`~refresher.frontend.AsyncTokens` ran it on a
  worker thread): the request's task awaits the hook once the worker is done, before the
  request goes on — after the save, as a sync hook runs;
- a refresh no task waits for (a background refresh, a late grant written back, a task
  cancelled meanwhile): the hook is scheduled on the loop that last used the front end,
  if it still runs; otherwise it runs to completion in the refreshing thread.

Whatever a hook raises is logged (``refresher.hooks``), never raised into a request.
:func:`is_async` tells a coroutine function; the sync :class:`~refresher.RefreshingSession`
refuses one (:func:`refuse_async`).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigurationError

if TYPE_CHECKING:  # asyncio is imported where a coroutine runs: `import refresher` skips it
    import asyncio

__all__ = ["AsyncHooks", "is_async", "refuse_async"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Call = tuple[Coroutine[Any, Any, Any], str]


def is_async(hook: object) -> bool:
    """Whether calling ``hook`` makes a coroutine (an ``async def`` function or method, a
    partial of one, an object whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None))  # noqa: B004 (an object with async __call__)


def refuse_async(**hooks: object) -> None:
    """Raise :class:`~refresher.ConfigurationError` for a coroutine-function hook given to
    a front end that runs hooks in plain threads."""
    for name, hook in hooks.items():
        if hook is not None and is_async(hook):
            raise ConfigurationError(
                f"{name} is a coroutine function, but RefreshingSession runs its hooks in the "
                "thread that refreshes, where nothing would await it: use a plain function, "
                "or an async front end (refresher.httpx.RefreshingAuth, "
                "refresher.aiohttp.RefreshingMiddleware), which awaits it on your event loop"
            )


class _Collected:
    """The coroutine hooks a worker thread made for the task that waits for it."""

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        self.closed = False
        self.lock = threading.Lock()

    def add(self, call: _Call) -> bool:
        with self.lock:
            if self.closed:
                return False
            self.calls.append(call)
            return True

    def close(self) -> list[_Call]:
        with self.lock:
            self.closed = True
            calls, self.calls = self.calls, []
            return calls


_WAITING: contextvars.ContextVar[_Collected | None] = contextvars.ContextVar(
    "refresher_waiting_hooks", default=None)


class AsyncHooks:
    """The coroutine hooks of one async front end, and the loop they run on."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    def wrap(self, hook: Callable[..., Any] | None, name: str) -> Callable[..., Any] | None:
        """``hook`` as the coordinator may call it from any thread: a plain function as it
        is; a coroutine function wrapped so that its coroutine goes to a loop."""
        if hook is None or not is_async(hook):
            return hook

        def call(*args: Any) -> None:
            self._submit((hook(*args), name))

        call.__name__ = getattr(hook, "__name__", name)
        return call

    async def run_waiting(self, work: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``work(*args, **kwargs)`` on a worker thread (:func:`asyncio.to_thread`), then
        the coroutine hooks it made, awaited here on the caller's loop (also when ``work``
        raised; its exception follows)."""
        import asyncio

        self.loop = asyncio.get_running_loop()
        collected = _Collected()
        context = _WAITING.set(collected)
        try:
            return await asyncio.to_thread(work, *args, **kwargs)
        finally:
            _WAITING.reset(context)
            for call in collected.close():
                await _logged(call)

    def _submit(self, call: _Call) -> None:
        collected = _WAITING.get()
        if collected is not None and collected.add(call):
            return  # the task waiting for this thread awaits it
        import asyncio

        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:  # called on a loop's own thread (a sync client in async code)
            self._keep(running.create_task(_logged(call)))
        elif loop is not None and loop.is_running():
            self._keep(asyncio.run_coroutine_threadsafe(_logged(call), loop))
        else:
            asyncio.run(_logged(call))  # no loop to give it to: run it here, to the end

    def _keep(self, future: asyncio.Future[Any] | Any) -> None:
        """Hold a scheduled hook until it ends (a task nobody references may vanish)."""
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)


async def _logged(call: _Call) -> None:
    coroutine, name = call
    try:
        await coroutine
    except Exception:
        log.exception("%s hook raised; carrying on", name)
