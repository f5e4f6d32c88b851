"""Scores and pictures: :mod:`.metrics` (NumPy metrics), :mod:`.evaluate`
(``unet evaluate``) and :mod:`.plots` (``unet plot``)."""
