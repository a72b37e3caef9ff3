"""``python -m evaluate`` from the repository root; the code is :mod:`smoothjax.cli.evaluate`."""
