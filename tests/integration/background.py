"""A blocking call run in a thread, for tests that must act while it waits."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Background:
    """Run a blocking call in a thread; keep what it returned or raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(call,), daemon=True).start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.value = call()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def join(self, timeout: float = 60.0) -> Any:
        assert self.done.wait(timeout), "the call did not return"
        if self.error is not None:
            raise self.error
        return self.value
