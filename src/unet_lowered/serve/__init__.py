"""``unet serve``: a trained run behind HTTP, with a web page.

:mod:`unet_lowered.serve.app` holds the FastAPI application (:func:`~unet_lowered.serve.app.create_app`)
and the server (:func:`~unet_lowered.serve.app.serve_run`); ``static/`` holds the page
(plain HTML, CSS and JavaScript, served by the package, nothing from the internet).
Needs the extra: ``pip install 'unet-lowered[serve]'``.
"""

from __future__ import annotations
