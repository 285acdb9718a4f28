"""Progress of the pipeline's stages for people and for logs: `Bars()(stage, event)`.

event has .done, .total, .message and .state (i2x.client.JobEvent; the in-process pipeline sends
the same shape). Three modes:
  "bars"  (a terminal): one live tqdm bar per stage, closed when its stage ends, so its time is
          the stage's own; a stage without a total (the report) shows a spinner-like counter;
  "lines" (not a terminal, e.g. CI logs): plain timestamped lines, no control codes, at a stage's
          start, its end and at most every `every` seconds in between;
  "quiet": nothing.
Everything goes to `stream` (default stderr), so stdout holds only the results (--json).
"""

from __future__ import annotations

import os
import sys
import threading
import time

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def default_mode(stream=None) -> str:
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        return "lines"
    try:
        import tqdm  # noqa: F401  (the SDK alone does not need tqdm)
    except ImportError:
        return "lines"
    return "bars"


class Bars:
    def __init__(self, mode: str | None = None, stream=None, every: float = 5.0):
        self.stream = stream or sys.stderr
        self.mode = mode or default_mode(self.stream)
        if self.mode not in ("bars", "lines", "quiet"):
            raise ValueError(f"progress mode {mode!r}: choose bars, lines or quiet")
        self.every = every
        self._bars: dict = {}
        self._started: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._ended: set[str] = set()
        self._closed = False
        self._ticker: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self, stage: str, event) -> None:
        with self._lock:
            if self.mode == "quiet" or stage in self._ended:
                return
            now = time.monotonic()
            first = stage not in self._started
            if first:
                self._started[stage] = now
            ended = event.state in TERMINAL
            if self.mode == "bars":
                self._bar(stage, event, ended)
            elif first or ended or now - self._last.get(stage, 0.0) >= self.every:
                self._line(stage, event, now, ended)
            if ended:
                self._ended.add(stage)

    def _line(self, stage: str, event, now: float, ended: bool) -> None:
        self._last[stage] = now
        count = f"{event.done}/{event.total}" if event.total else f"{event.done}"
        if ended:
            text = f"{stage} {event.state.lower()} in {now - self._started[stage]:.1f} s ({count})"
        else:
            text = " ".join(x for x in (stage, count if event.total or event.done else "", event.message) if x)
        stamp = time.strftime("%H:%M:%S")
        self.stream.write(f"{stamp} {text}\n")
        self.stream.flush()

    def _bar(self, stage: str, event, ended: bool) -> None:
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(desc=f"{stage:<11}", total=event.total or None, unit="unit",
                                           file=self.stream, leave=True, **self._size())
            self._start_ticker()
        if event.total and bar.total != event.total:
            bar.total = event.total
        bar.n = event.done
        bar.set_postfix_str((event.state.lower() if ended else event.message)[:40], refresh=False)
        bar.refresh()
        if ended:
            bar.close()  # its elapsed time stops now: the stage's own time

    def _start_ticker(self) -> None:
        """Redraw the open bars every second, so a stage without progress events (the report)
        shows its time running instead of a frozen screen."""
        if self._ticker is not None:
            return

        def tick() -> None:
            while True:
                time.sleep(1.0)
                with self._lock:
                    open_bars = [bar for stage, bar in self._bars.items() if stage not in self._ended]
                    if self._closed:
                        return
                    for bar in open_bars:
                        bar.refresh()

        self._ticker = threading.Thread(target=tick, daemon=True, name="i2x-progress")
        self._ticker.start()

    def _size(self) -> dict:
        """tqdm's width and height: the terminal's, or 100x24 where it reports none (a fresh pty
        says 0x0, and tqdm then hides every bar)."""
        try:
            size = os.get_terminal_size(self.stream.fileno())
            if size.columns > 0 and size.lines > 0:
                return {}
        except (AttributeError, OSError, ValueError):
            pass
        return {"ncols": 100, "nrows": 24}

    def close(self) -> None:
        with self._lock:
            for stage, bar in self._bars.items():
                if stage not in self._ended:
                    bar.close()
            self._ended.update(self._bars)
            self._closed = True


def add_output_flags(p) -> None:
    """--quiet / --json / --progress, shared by analyze and demo."""
    g = p.add_argument_group("output")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress, only the final result")
    g.add_argument("--json", action="store_true", help="print the final result as one JSON object on stdout "
                                                       "(progress, if any, goes to stderr)")
    g.add_argument("--progress", choices=("auto", "bars", "lines", "none"), default="auto",
                   help="bars in a terminal, timestamped lines otherwise (auto, the default), or none")
    g.add_argument("--no-progress", dest="progress", action="store_const", const="none", help="same as --progress none")


def progress_mode(args) -> str | None:
    if args.quiet or args.progress == "none":
        return "quiet"
    return None if args.progress == "auto" else args.progress
