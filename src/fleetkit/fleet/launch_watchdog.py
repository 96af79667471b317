"""The launcher's watchdog: kills what its children started if the launcher is SIGKILLed.

PR_SET_PDEATHSIG has the kernel kill each direct child of a dying launcher, but not the
processes those children started (a DataGenerator pipe, a script's own helpers): they sit
in the child's process group and outlive it.  This small process, started by the launcher
with a pipe on its stdin, keeps the process group of every running child.  Lines it
reads: ``+PGID`` (a child started), ``-PGID`` (the launcher reaped that child), ``bye``
(the launcher ends normally).  End of input without ``bye`` means the launcher died: every
group still listed gets SIGKILL.  It runs in its own session, so a Ctrl-C in the terminal
does not reach it, and it imports nothing but the standard library (it is started as a
plain script: ``python -I launch_watchdog.py``).
"""
import os
import signal
import sys


def main() -> None:
    groups: set[int] = set()
    for line in sys.stdin:
        word = line.strip()
        if word == "bye":
            return
        if word[:1] in "+-" and word[1:].isdigit():
            (groups.add if word[0] == "+" else groups.discard)(int(word[1:]))
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass   # the group is gone already


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    main()
