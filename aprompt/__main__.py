"""``python -m aprompt``: the command line (see :mod:`aprompt.cli`)."""

import sys

from aprompt.cli import main

if __name__ == "__main__":
    sys.exit(main())
