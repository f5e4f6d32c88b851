"""``FusedAdam``: Keras' Adam with TensorFlow's fused update kernel, checked against
Adam written out in NumPy."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from unet_lowered.training.optimizers import FusedAdam

GRADIENTS = np.array([[0.5, -1.0, 2e-3], [0.25, 1.0, -4e-3], [-0.5, 0.5, 1e-3]], "float32")
START = np.array([1.0, -2.0, 0.5], "float32")


def adam_by_hand(lr=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7) -> np.ndarray:
    w, m, v = START.astype(np.float64), np.zeros(3), np.zeros(3)
    for t, g in enumerate(GRADIENTS.astype(np.float64), start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        w = w - lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (np.sqrt(v) + epsilon)
    return w


def run(optimizer) -> np.ndarray:
    variable = keras.Variable(START.copy())
    optimizer.build([variable])
    for g in GRADIENTS:
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
    return keras.ops.convert_to_numpy(variable)


@pytest.mark.backend
def test_fused_adam_is_adam_by_hand():
    # Three steps from (1, -2, 0.5): the first moves each weight by lr in its gradient's
    # opposite direction, the rest as the moments say.
    expected = adam_by_hand()
    np.testing.assert_allclose(run(FusedAdam(0.1)), expected, rtol=1e-5)
    np.testing.assert_allclose(run(keras.optimizers.Adam(0.1)), expected, rtol=1e-5)


def test_on_tensorflow_the_update_is_one_fused_kernel():
    import tensorflow as tf

    def op_types(optimizer) -> set[str]:
        variable = keras.Variable(START.copy())
        optimizer.build([variable])
        fn = tf.function(lambda g: optimizer.apply([g], [variable]))
        graph = fn.get_concrete_function(tf.TensorSpec((3,), tf.float32)).graph
        return {op.type for op in graph.get_operations()}

    assert "ResourceApplyAdam" in op_types(FusedAdam(0.1))
    assert "ResourceApplyAdam" not in op_types(keras.optimizers.Adam(0.1))
    assert "ResourceApplyAdam" not in op_types(FusedAdam(0.1, amsgrad=True))  # Keras' own


def test_amsgrad_falls_back_to_keras_adam():
    np.testing.assert_array_equal(
        run(FusedAdam(0.1, amsgrad=True)), run(keras.optimizers.Adam(0.1, amsgrad=True))
    )


def test_a_compiled_model_saves_and_resumes_with_its_state(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=FusedAdam(0.01), loss="mse")
    x, y = np.ones((4, 2), "float32"), np.zeros((4, 1), "float32")
    model.fit(x, y, epochs=2, verbose=0)
    model.save(tmp_path / "last.keras")
    again = keras.saving.load_model(tmp_path / "last.keras", compile=True, safe_mode=True)
    assert type(again.optimizer) is FusedAdam
    assert int(again.optimizer.iterations) == 2
    np.testing.assert_array_equal(again.optimizer.variables[-1], model.optimizer.variables[-1])
