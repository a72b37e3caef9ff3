"""``python -m evaluate``: see :mod:`smoothjax.cli.evaluate` (``--help`` lists the flags)."""

import sys

from smoothjax.cli.evaluate import build_parser, main, settings_from_args

__all__ = ["build_parser", "settings_from_args", "main"]

if __name__ == "__main__":
  sys.exit(main())
