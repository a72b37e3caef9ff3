"""The command lines of smoothjax: ``train``, ``evaluate`` and ``attacks`` (attack vs compute).

``python -m train`` / ``python -m evaluate`` (thin ``train/`` and ``evaluate/`` folders of the
repository) and the console scripts ``smoothjax-train`` / ``smoothjax-evaluate`` run
:func:`smoothjax.cli.train.main` / :func:`smoothjax.cli.evaluate.main`.
"""
