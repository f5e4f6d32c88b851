"""unet_lowered: the U-Net of Ronneberger et al. (2015) at 25% width, on Keras 3.

Importing the package picks the TensorFlow backend for Keras when the user has
not chosen one with ``KERAS_BACKEND`` (it must happen before Keras is imported).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lines) is noise for a CLI user.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# OpenCV prints "[ WARN ]" and "[ERROR]" lines for corrupt files (a PNG whose IHDR is not
# first); we report those files ourselves, in one line each.
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")

__version__ = "0.1.0"

__all__ = ["__version__"]
