"""``python -m train --config=train/configs/NAME.py --workdir=DIR``.

Run from the repository root; the code is :mod:`smoothjax.cli.train`.
"""

import sys

from smoothjax.cli.train import main, parse_flags

__all__ = ["main", "parse_flags"]

if __name__ == "__main__":
  sys.exit(main())
