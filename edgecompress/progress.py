"""Progress for long work: a tqdm bar with ETA on a terminal, plain lines in CI logs.

A bar redraws itself with carriage returns, which a log file keeps as one unreadable line;
so when stderr is not a terminal, a line is printed at most every ``interval_s`` seconds
(a short loop prints nothing) and one at the end if any was printed.

>>> with progress(range(14), total=14, desc="prune: bisecting") as bar:
...     for i in bar:
...         bar.set_postfix_str(f"try {i}")
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

PLAIN_INTERVAL_S = 10.0


class Bar(Protocol[T_co]):
    """What both kinds of progress offer: iterate, annotate, close."""

    def __iter__(self) -> Iterator[T_co]: ...
    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Bar[T_co]: ...
    def __exit__(self, *exc: object) -> None: ...


def _tty() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    interval_s: float = PLAIN_INTERVAL_S,
) -> Bar[T]:
    """``iterable`` with progress on stderr: a tqdm bar (count, rate, ETA) on a terminal,
    else a plain line every ``interval_s`` seconds; nothing when not ``enabled``."""
    if enabled and _tty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)  # type: ignore[return-value]
    return _Lines(iterable, total, desc, enabled, interval_s)


class _Lines(Generic[T]):
    """Periodic plain lines: "desc: 3/14 (21%), 12 s elapsed, ETA 45 s (note)"."""

    def __init__(
        self, iterable: Iterable[T], total: int | None, desc: str, enabled: bool, interval_s: float
    ) -> None:
        self.iterable, self.total, self.desc = iterable, total, desc
        self.enabled, self.interval_s = enabled, interval_s
        self.done, self.note, self.printed = 0, "", False
        self.start = self.last = time.monotonic()

    def __iter__(self) -> Iterator[T]:
        self.start = self.last = time.monotonic()
        for item in self.iterable:
            yield item
            self.done += 1
            now = time.monotonic()
            if self.enabled and now - self.last >= self.interval_s:
                self.last = now
                self._print(self._status(now))

    def _status(self, now: float) -> str:
        elapsed = now - self.start
        text = f"{self.desc}: {self.done}"
        if self.total:
            eta = elapsed / self.done * (self.total - self.done) if self.done else None
            text += f"/{self.total} ({100 * self.done / self.total:.0f}%)"
            text += f", {elapsed:.0f} s elapsed" + (f", ETA {eta:.0f} s" if eta is not None else "")
        else:
            text += f" done, {elapsed:.0f} s elapsed"
        return text + (f" ({self.note})" if self.note else "")

    def _print(self, line: str) -> None:
        self.printed = True
        print(line, file=sys.stderr, flush=True)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.note = s

    def close(self) -> None:
        if self.enabled and self.printed:
            elapsed = time.monotonic() - self.start
            note = f" ({self.note})" if self.note else ""
            self._print(f"{self.desc}: finished {self.done} in {elapsed:.0f} s{note}")
            self.printed = False

    def __enter__(self) -> _Lines[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def duration(seconds: float) -> str:
    """ "45 s", "12 min", "1.5 h": a duration as a person reads an estimate."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def say(line: str) -> None:
    """One line on stderr that a bar on a terminal does not overwrite."""
    print(("\r\x1b[K" if _tty() else "") + line, file=sys.stderr, flush=True)


@contextmanager
def elapsed(desc: str, enabled: bool = True, interval_s: float = 30.0) -> Iterator[None]:
    """For work with no steps to count (a converter in a subprocess): "desc (12 s)" kept
    current on a terminal, else a plain line every ``interval_s`` seconds."""
    if not enabled:
        yield
        return
    tty, stop = _tty(), threading.Event()
    start = time.monotonic()

    def tick() -> None:
        while not stop.wait(1.0 if tty else interval_s):
            line = f"{desc} ({time.monotonic() - start:.0f} s elapsed)"
            print(
                f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True
            )

    thread = threading.Thread(target=tick, name="edgecompress-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if tty:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)  # clear the line
