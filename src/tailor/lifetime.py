"""No process outlives the one that started it: a child asks Linux to be signalled when its
parent dies (PR_SET_PDEATHSIG). The fine-tuning service starts each job this way, and sets
TAILOR_DIE_WITH_PARENT so that a job's torchrun launcher and ranks do the same, down the chain."""

from __future__ import annotations

import os
import signal

ENV = "TAILOR_DIE_WITH_PARENT"


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask to get `sig` when the parent *thread* exits. No-op where prctl is missing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def inherit() -> None:
    """In a process started under TAILOR_DIE_WITH_PARENT: die with the parent too. If the parent
    is already gone (we were reparented before asking), exit now."""
    if os.environ.get(ENV) != "1":
        return
    parent = os.getppid()
    die_with_parent()
    if parent == 1 or os.getppid() != parent:
        os._exit(137)


def preexec() -> None:
    """For Popen(preexec_fn=...) in a process that must die with its parent when asked to."""
    if os.environ.get(ENV) == "1":
        die_with_parent()
