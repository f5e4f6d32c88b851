"""``unet train``: settings, the input pipeline, losses, metrics and the fit.

:mod:`.config` (TrainConfig, RunConfig) -> :mod:`.cache` (decoded samples) ->
:mod:`.augment` -> :mod:`.sequence` (batches) -> :mod:`.feed` (tf.data on
TensorFlow) -> :mod:`.train` with :mod:`.losses`, :mod:`.metrics`,
:mod:`.weightmap` and :mod:`.callbacks`.
"""
