"""``python -m fleetkit.launch ...``: the same as ``fleetkit launch ...`` and ``fleetrun ...``."""
import sys

from .fleet.launch import main

if __name__ == "__main__":
    sys.exit(main())
