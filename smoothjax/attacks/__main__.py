"""``python -m smoothjax.attacks``: see :mod:`smoothjax.cli.attacks`."""

import sys

from smoothjax.cli.attacks import main

if __name__ == "__main__":
  sys.exit(main())
