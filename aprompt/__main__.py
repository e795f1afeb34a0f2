"""``python -m aprompt``: the command line (see :mod:`aprompt._cli`)."""

import sys

from aprompt._cli import main

if __name__ == "__main__":
    sys.exit(main())
