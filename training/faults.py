"""Fault injection for the kill tests: ``CLCE_KILL_AT=POINT`` SIGKILLs the process when it reaches POINT
(``CLCE_KILL_SIGNAL=INT`` sends SIGINT instead: Ctrl-C at that instant).

A fine-tuning run passes these points, in this order for each epoch E (``tests/training/test_kills.py``
kills a real run at every one of them and resumes it):

    trained@E                 epoch E trained, not yet validated
    metrics@E                 its line appended to metrics.jsonl, no checkpoint written yet
    last.pt@E:written         last.pt's temporary file complete and on disk, not yet renamed
    last.pt@E:replaced        last.pt renamed into place
    best.pt@E:written         the same for best.pt (when epoch E improved the validation top-1)
    best.pt@E:replaced
    tested                    the final test line appended to metrics.jsonl

A comma-separated list kills at the first of them reached. With the variable unset (always, outside
tests) a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["KILL_ENV", "SIGNAL_ENV", "kill_point"]

KILL_ENV = "CLCE_KILL_AT"
SIGNAL_ENV = "CLCE_KILL_SIGNAL"


def kill_point(name: str) -> None:
    """Signal this process when ``name`` is listed in ``$CLCE_KILL_AT``: SIGKILL (no cleanup, no
    ``finally``), or the signal ``$CLCE_KILL_SIGNAL`` names (``INT``, ``TERM``)."""
    wanted = os.environ.get(KILL_ENV)
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), getattr(signal, f"SIG{os.environ.get(SIGNAL_ENV, 'KILL')}"))
