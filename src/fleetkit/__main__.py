"""``python -m fleetkit ...``: the ``fleetkit`` command when the console script is not on PATH."""
import sys

from .cli import main

sys.exit(main())
