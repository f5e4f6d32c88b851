"""From a trained run to masks: :mod:`.predictor` (one image, any size), with
:mod:`.tiling`, :mod:`.tta` and :mod:`.postprocess`; :mod:`.batch` (``unet predict``
on files), :mod:`.overlay` (pictures of masks) and :mod:`.export` (ONNX, SavedModel).
"""
