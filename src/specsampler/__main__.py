"""``python -m specsampler``: the command line (see :mod:`specsampler.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
