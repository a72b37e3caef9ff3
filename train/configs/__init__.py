"""Presets for ``python -m train --config=train/configs/NAME.py`` (see ``base.py``)."""
