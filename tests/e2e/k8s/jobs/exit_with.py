"""A pod that exits with a chosen code: ``exit_with.py CODE [--once MARKER] [--sleep S]``.

``--once MARKER``: only the first run (no MARKER file yet) exits CODE, later runs exit 0.
CODE 137 is a real SIGKILL of this process (the runtime reports 128 + 9).
"""
from __future__ import annotations

import os
import signal
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    code = int(args[0])
    sleep = float(args[args.index("--sleep") + 1]) if "--sleep" in args else 0.0
    time.sleep(sleep)
    if "--once" in args:
        marker = args[args.index("--once") + 1]
        if os.path.exists(marker):
            print("second run: exit 0", flush=True)
            return 0
        open(marker, "w").close()
    print(f"exiting with {code}", flush=True)
    if code == 137:
        os.kill(os.getpid(), signal.SIGKILL)
    return code


if __name__ == "__main__":
    sys.exit(main())
