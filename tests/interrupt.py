"""Starting a child process that a test interrupts with Ctrl-C (SIGINT)."""

from __future__ import annotations

import signal


def sigint_default() -> None:
    """A ``preexec_fn``: SIGINT at its default in the child, so that Python turns it into KeyboardInterrupt.

    A job that a non-interactive shell starts in the background inherits SIGINT ignored, and Python keeps an
    ignored SIGINT: without this, a Ctrl-C test would pass or fail by how the suite was launched."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
