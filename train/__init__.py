"""``python -m train`` from the repository root (:mod:`smoothjax.cli.train`) and its presets."""
