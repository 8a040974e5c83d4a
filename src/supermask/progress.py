"""Progress output: a bar that redraws in place on a terminal; in a log file (cluster jobs, CI) every frame of a
bar would be a line, so there plain lines, one per event (an epoch, a finished cell), replace it."""

from __future__ import annotations

import sys


def is_live(progress: bool) -> bool:
    """Whether to draw a bar: progress is wanted and stderr is a terminal."""
    return progress and sys.stderr.isatty()


def log_line(text: str) -> None:
    """One plain progress line on stderr, flushed at once: a log is read while the job runs."""
    print(text, file=sys.stderr, flush=True)
