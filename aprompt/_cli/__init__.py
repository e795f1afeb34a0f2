"""The ``aprompt`` command line, a thin layer over the public API.

Commands: ``optimize``, ``evaluate``, ``show``, ``report``, ``demo``; ``aprompt COMMAND --help`` teaches each.

Exit codes (for scripts): 0 done; 1 an unexpected error (a bug, or your code raising outside a run);
2 bad arguments or configuration (:class:`~aprompt.ConfigError` and unreadable files); 3 an LM endpoint
error (unreachable, refused key, failing); 130 interrupted by Ctrl-C (143 by SIGTERM).
"""

from aprompt._cli.loading import load_object, read_examples
from aprompt._cli.main import main
from aprompt._cli.parser import build_parser

__all__ = ["build_parser", "load_object", "main", "read_examples"]
