"""Progress and cancellation callbacks.

Long library functions take ``progress: ProgressCallback | None`` and ``cancel: CancelCallback | None``. The
library never prints: the CLI binds the callbacks to a progress bar or to the JSON stream that the QGIS plugin
reads (``--progress json``), the plugin to ``feedback``.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

from geoimplicit.errors import CancelledError


class ProgressCallback(Protocol):
    def __call__(self, done: float, total: float, stage: str = "", message: str = "") -> None: ...


CancelCallback = Callable[[], bool]


def no_progress(done: float, total: float, stage: str = "", message: str = "") -> None:
    """A progress callback that does nothing."""


def check_cancel(cancel: Optional[CancelCallback]) -> None:
    """Raise :class:`CancelledError` if the cancel callback says so."""
    if cancel is not None and cancel():
        raise CancelledError("run cancelled", hint="re-run the same command to resume")
