"""``python -m evaluate``: smoothed accuracy, attacks and certification of a checkpoint.

A thin command line over :mod:`smoothjax.evaluation`; see ``python -m evaluate --help`` and
``../shared/CONTRACT.md``. ``evaluate.__main__.main(argv)`` is the console-script entry point
(``smoothjax-evaluate``).
"""
