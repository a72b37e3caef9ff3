"""``python -m train``: the training command line (see :mod:`train.__main__`)."""
