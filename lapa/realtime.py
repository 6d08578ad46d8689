"""Real-time (SCHED_FIFO) scheduling of the calling thread, for the threads on the control path.

On a robot PC (a PREEMPT_RT kernel, as libfranka asks for) the threads that turn a camera frame
into a robot command run at a real-time priority, so the other work on the machine cannot delay
them. Threads created by a real-time thread inherit its scheduling (Linux default).
"""

from __future__ import annotations

import os

MAX_PRIORITY = 99


def check_priority(priority: int) -> int:
    """`priority` if it is 0 (off) or 1..99, else ValueError: checked at start-up, before any thread."""
    if priority < 0 or priority > MAX_PRIORITY:
        raise ValueError(f"a real-time priority is 0 (off) or 1..{MAX_PRIORITY}, got {priority}")
    return priority


def make_thread_realtime(priority: int) -> str | None:
    """SCHED_FIFO at `priority` (1..99) for the calling thread; 0 leaves it alone.

    Returns None on success (or for 0), else why not (no CAP_SYS_NICE, not Linux): the caller logs
    it and runs at normal priority."""
    if check_priority(priority) == 0:
        return None
    try:  # pid 0 = the calling thread on Linux
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (AttributeError, PermissionError, OSError) as err:
        return f"{type(err).__name__}: {err}"
    return None
