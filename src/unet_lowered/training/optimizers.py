"""Adam with TensorFlow's fused update kernel.

Keras' ``Adam.update_step`` writes the update as a dozen element-wise ``keras.ops``
per weight tensor (two moment updates, a square root, a division, three assignments),
each a separate pass over the weights; TensorFlow has the same update as one kernel,
``ResourceApplyAdam``. :class:`FusedAdam` calls that kernel on the TensorFlow backend and
is Keras' ``Adam`` everywhere else: on JAX and PyTorch, with ``amsgrad``, and under a
``tf.distribute`` strategy (whose mirrored variables Keras updates its own way).

The arithmetic is Keras' own (TensorFlow's kernel computes ``m += (g - m)(1 - b1)``,
``v += (g^2 - v)(1 - b2)``, ``w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``),
equal up to float32 rounding; it saves 3-7 ms of a 100-120 ms bf16 training step at
224 px, batch 4, on 2 cores (``benchmarks/step_levers.py``).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="unet_lowered")
class FusedAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` (same arguments, state and results) whose update runs as
    TensorFlow's fused ``ResourceApplyAdam`` kernel on the TensorFlow backend."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if keras.backend.backend() != "tensorflow" or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        if tf.distribute.has_strategy():
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = ops.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=ops.power(beta_1, step),
            beta2_power=ops.power(beta_2, step),
            lr=ops.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=ops.cast(self.epsilon, dtype),
            grad=ops.cast(gradient, dtype),
        )
        return None
