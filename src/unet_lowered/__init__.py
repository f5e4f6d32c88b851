"""unet_lowered: the U-Net of Ronneberger et al. (2015) at 25% width, on Keras 3.

Importing the package changes nothing global: Keras runs on the backend the user chose
(``KERAS_BACKEND`` or ``~/.keras/keras.json``; TensorFlow, Keras' own default, when
neither names one), and TensorFlow's and OpenCV's logging stay as they are. The ``unet``
command quiets those two (:mod:`unet_lowered.cli`).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
