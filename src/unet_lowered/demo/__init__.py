"""Data the project makes itself: :mod:`.synth` (``unet synth``, synthetic chest
X-rays with exact lung masks) and :mod:`.pipeline` (``unet demo``)."""
