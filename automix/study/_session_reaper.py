"""The watchdog of a local Ray session: stops what a killed driver's Ray leaves behind.

Run by `automix.study.executors` as ``python -I -S _session_reaper.py DRIVER_PID SESSION_DIR``
with the driver holding the write end of its stdin: standard library only, so that it starts in
a few milliseconds and holds about 10 MB. See `executors._start_reaper` for why it exists.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time


def _reap_session(driver_pid: int, session_dir: str, every_s: float = 2.0, grace_s: float = 1.0) -> None:
    """The watchdog's program.

    While the driver lives, every `every_s` it notes the driver's children whose command line
    names the session's directory (GCS, raylet, monitors) and all their descendants (agents,
    workers), each with its start time. When stdin reaches its end the driver is gone: every
    noted process still running (same PID and start time: never a stranger that reused a PID)
    gets SIGTERM, and SIGKILL after `grace_s`.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    marker, me = session_dir.encode(), os.getpid()
    noted: dict[int, int] = {}  # pid -> start time (clock ticks since boot)

    def stat(pid: int) -> tuple[int, int] | None:  # (parent pid, start time) of a live process
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return None if fields[0] in (b"Z", b"X") else (int(fields[1]), int(fields[19]))

    def cmdline(pid: int) -> bytes:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read()
        except OSError:
            return b""

    def scan() -> None:
        procs = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != me:
                info = stat(int(name))
                if info is not None:
                    procs[int(name)] = info
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        todo = [pid for pid in children.get(driver_pid, []) if marker in cmdline(pid)]
        while todo:
            pid = todo.pop()
            noted[pid] = procs[pid][1]
            todo.extend(children.get(pid, []))

    def alive() -> list[int]:
        return [pid for pid, start in noted.items() if (stat(pid) or (0, -1))[1] == start]

    scan()
    while True:
        ready, _, _ = select.select([0], [], [], every_s)
        if ready and not os.read(0, 4096):
            break  # the driver is gone
        scan()
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)


if __name__ == "__main__":
    _reap_session(int(sys.argv[1]), sys.argv[2])
