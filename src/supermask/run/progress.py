"""Progress output: a bar that redraws in place on a terminal; in a log file (cluster jobs, CI) every frame of a
bar would be a line, so there plain lines, one per event (an epoch, a finished cell), replace it, and `StepLines`
adds one every LOG_EVERY_SECONDS during an epoch, so a long epoch is not silent."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

LOG_EVERY_SECONDS = 60.0


def is_live(progress: bool) -> bool:
    """Whether to draw a bar: progress is wanted and stderr is a terminal."""
    return progress and sys.stderr.isatty()


def log_line(text: str) -> None:
    """One plain progress line on stderr, flushed at once: a log is read while the job runs."""
    print(text, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """[H:]MM:SS, as the bar writes times."""
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m:02d}:{s:02d}"


class StepLines:
    """A training bar's stand-in in a log: after a step, a line when LOG_EVERY_SECONDS (read when made) have passed
    since the last line (or the start), with the steps done, the images per second since the start and the time
    left at that pace (per-epoch evaluation included, as it is part of the pace). It takes the calls a tqdm bar
    takes; `set_description` names the epoch, and an image count is steps times `batch_size` (the last batch of an
    epoch may be shorter)."""

    def __init__(self, total: int, initial: int = 0, *, batch_size: int, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.done, self.batch_size, self.enabled, self.clock = total, initial, batch_size, enabled, clock
        self.every, self.description = LOG_EVERY_SECONDS, ""
        self.first = initial  # steps trained before this process (a resumed run): not part of its pace
        self.start = self.last = clock()

    def set_description(self, text: str) -> None:
        self.description = text

    def set_postfix(self, *args, **kwargs) -> None:
        """The bar's summary: the epoch line says it in a log."""

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if not self.enabled or now - self.last < self.every:
            return
        self.last = now
        steps, seconds = self.done - self.first, max(now - self.start, 1e-9)
        left = (self.total - self.done) * seconds / steps if steps else 0.0
        log_line(f"{self.description}: step {self.done}/{self.total}, {steps * self.batch_size / seconds:.0f} img/s, "
                 f"{duration(left)} left")

    def __enter__(self) -> StepLines:
        return self

    def __exit__(self, *exc) -> None:
        return None
