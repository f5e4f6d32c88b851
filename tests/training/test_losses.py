"""Losses on logits: hand-computed tables, config round trips, one fit (with the metrics).

Every test here is tiny and runs under each Keras backend
(``KERAS_BACKEND=jax .venv/bin/python -m pytest -m backend tests/training/test_losses.py``).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from keras import ops

from tensor_fixtures import EMPTY, HALF, A, B, C, batch, hard_logits, np_, onehot_logits
from unet_lowered.errors import UnetError
from unet_lowered.options import LOSSES
from unet_lowered.training import losses as L
from unet_lowered.training import metrics as TM

pytestmark = pytest.mark.backend


def sigmoid_bce(x: float, y: float) -> float:
    """Hand formula: -[y log s(x) + (1 - y) log(1 - s(x))]."""
    s = 1.0 / (1.0 + math.exp(-x))
    return -(y * math.log(s) + (1.0 - y) * math.log(1.0 - s))


# ---- binary cross-entropy ------------------------------------------------------------------


def test_bce_matches_hand_formula():
    x = np.array([[0.0, 2.0], [-1.0, 3.0]], np.float32)
    y = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    expected = np.mean([sigmoid_bce(a, b) for a, b in zip(x.ravel(), y.ravel(), strict=True)])
    # log 2, log(1 + e^2), log(1 + e^-1), log(1 + e^-3)
    assert expected == pytest.approx((0.693147 + 2.126928 + 0.313262 + 0.048587) / 4, abs=1e-6)
    got = np_(L.bce_loss(batch(y), x[None, ..., None]))
    assert got.shape == (1,)
    assert got[0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("truth", "logit", "expected"),
    [(1.0, 100.0, 0.0), (0.0, -100.0, 0.0), (1.0, -100.0, 100.0), (0.0, 100.0, 100.0)],
)
def test_bce_is_stable_at_extreme_logits(truth, logit, expected):
    got = np_(L.bce_loss(np.full((1, 2, 2, 1), truth, np.float32), np.full((1, 2, 2, 1), logit)))
    assert got[0] == pytest.approx(expected, abs=1e-5)


def test_bce_is_per_image():
    y = batch(A, A)
    x = np.stack([hard_logits(y[0]), np.zeros_like(y[0])])
    got = np_(L.bce_loss(y, x))
    assert got == pytest.approx([0.0, math.log(2.0)], abs=1e-6)


# ---- Dice -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("truth", "pred", "dice"),
    [(A, A, 1.0), (A, C, 0.0), (A, HALF, 2 / 3), (HALF, A, 2 / 3), (A, B, 1 / 2), (A, EMPTY, 0.0)],
    ids=["perfect", "disjoint", "half", "half-swapped", "shifted", "empty-prediction"],
)
def test_dice_loss_table_without_smoothing(truth, pred, dice):
    y = batch(truth)
    got = np_(L.dice_loss(y, hard_logits(batch(pred)), smooth=0.0))
    assert got[0] == pytest.approx(1.0 - dice, abs=1e-6)


@pytest.mark.parametrize(
    ("truth", "pred", "expected"),
    [(A, A, 0.0), (EMPTY, EMPTY, 0.0), (A, C, 1 - 1 / 9), (A, HALF, 1 - 5 / 7)],
    ids=["perfect", "both-empty", "disjoint", "half"],
)
def test_dice_loss_with_default_smooth_one(truth, pred, expected):
    # (2 |P∩T| + 1) / (|P| + |T| + 1): disjoint 4+4 px -> 1/9, half 2 of 4 px -> 5/7
    got = np_(L.dice_loss(batch(truth), hard_logits(batch(pred))))
    assert got[0] == pytest.approx(expected, abs=1e-6)


def test_dice_loss_is_per_image_then_mean_over_batch():
    big = np.zeros((4, 4))
    big[:3] = 1  # 12 px, predicted perfectly -> Dice 1
    small_true = np.zeros((4, 4))
    small_true[3, :2] = 1
    small_pred = np.zeros((4, 4))
    small_pred[3, 2:] = 1  # disjoint -> Dice 0
    y = batch(big, small_true)
    x = hard_logits(batch(big, small_pred))
    per_image = np_(L.dice_loss(y, x, smooth=0.0))
    assert per_image == pytest.approx([0.0, 1.0], abs=1e-6)
    # The Loss class averages images: 0.5, not the pooled 1 - 24/28.
    assert float(np_(L.DiceLoss(smooth=0.0)(y, x))) == pytest.approx(0.5, abs=1e-6)


def test_bce_dice_is_the_sum():
    rng = np.random.default_rng(1)
    y = (rng.random((2, 5, 5, 1)) > 0.5).astype(np.float32)
    x = rng.normal(size=(2, 5, 5, 1)).astype(np.float32)
    total = np_(L.bce_dice_loss(y, x))
    assert total == pytest.approx(np_(L.bce_loss(y, x)) + np_(L.dice_loss(y, x)), rel=1e-6)


# ---- 0/255 masks ----------------------------------------------------------------------


def test_a_0_255_mask_gives_the_hand_values_of_its_0_1_mask():
    # The hand formula's table of test_bce_matches_hand_formula, the truth as 0/255 uint8
    x = np.array([[0.0, 2.0], [-1.0, 3.0]], np.float32)[None, ..., None]
    y255 = np.array([[255, 0], [0, 255]], np.uint8)[None, ..., None]
    bce = (0.693147 + 2.126928 + 0.313262 + 0.048587) / 4  # unclipped, y = 255: about -190
    assert np_(L.bce_loss(y255, x))[0] == pytest.approx(bce, abs=1e-6)
    # Dice, truth A (4 px) as 0/255, prediction HALF (2 of them): (2*2 + 1) / (2 + 4 + 1)
    a255 = (batch(A) * 255).astype(np.uint8)
    assert np_(L.dice_loss(a255, hard_logits(batch(HALF))))[0] == pytest.approx(1 - 5 / 7)


@pytest.mark.parametrize("name", LOSSES)
def test_every_binary_loss_reads_0_255_as_0_1(name):
    rng = np.random.default_rng(4)
    y = batch(A, B)
    x = rng.normal(size=(2, 4, 4, 1)).astype(np.float32)
    weight = 1 + rng.random(y.shape).astype(np.float32)
    loss = L.get_loss(name, 1)
    ones = float(np_(loss(np.concatenate([y, weight], -1), x)))
    got = float(np_(loss(np.concatenate([255 * y, weight], -1), x)))
    assert got == pytest.approx(ones, rel=1e-6) and got >= 0


# ---- focal ------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1, 3])
def test_focal_with_gamma_zero_is_crossentropy(num_classes):
    rng = np.random.default_rng(2)
    if num_classes == 1:
        y = (rng.random((2, 4, 4, 1)) > 0.5).astype(np.float32)
    else:
        y = rng.integers(0, num_classes, (2, 4, 4, 1)).astype(np.float32)
    x = (3 * rng.normal(size=(2, 4, 4, num_classes))).astype(np.float32)
    focal = np_(L.focal_loss(y, x, num_classes, gamma=0.0))
    assert focal == pytest.approx(np_(L.bce_loss(y, x, num_classes)), rel=1e-5)


@pytest.mark.parametrize(
    ("truth", "alpha", "expected"),
    [
        (1.0, None, 0.25 * math.log(2)),  # p_t = 1/2: (1 - 1/2)^2 log 2
        (1.0, 0.25, 0.25 * 0.25 * math.log(2)),  # foreground weighted alpha
        (0.0, 0.25, 0.75 * 0.25 * math.log(2)),  # background weighted 1 - alpha
    ],
)
def test_focal_hand_values_at_logit_zero(truth, alpha, expected):
    y = np.full((1, 2, 2, 1), truth, np.float32)
    got = np_(L.focal_loss(y, np.zeros((1, 2, 2, 1), np.float32), gamma=2.0, alpha=alpha))
    assert got[0] == pytest.approx(expected, rel=1e-6)


def test_focal_down_weights_easy_pixels():
    y = np.ones((1, 1, 1, 1), np.float32)
    x = np.full((1, 1, 1, 1), 3.0, np.float32)  # an easy, correct pixel
    assert np_(L.focal_loss(y, x))[0] < 0.01 * np_(L.bce_loss(y, x))[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": -1.0}, "gamma must be a number >= 0, got -1.0"),
        ({"gamma": None}, "gamma must be a number >= 0, got None"),  # was a TypeError
        ({"alpha": 1.5}, "alpha must be in"),
        ({"alpha": 0.25, "num_classes": 3}, "binary masks only"),
    ],
)
def test_focal_rejects_bad_parameters(kwargs, message):
    with pytest.raises(UnetError, match=message):
        L.FocalLoss(**kwargs)


# ---- weighted BCE and the weight channel --------------------------------------------------


def test_weighted_bce_weights_pixels():
    y = batch(A)
    x = np.zeros((1, 4, 4, 1), np.float32)
    ones = np.concatenate([y, np.ones_like(y)], -1)
    assert np_(L.weighted_bce_loss(ones, x)) == pytest.approx(np_(L.bce_loss(y, x)), rel=1e-6)
    twos = np.concatenate([y, 2 * np.ones_like(y)], -1)
    assert np_(L.weighted_bce_loss(twos, x))[0] == pytest.approx(2 * math.log(2), rel=1e-6)
    # Weight 10 on one pixel of 16, 0 elsewhere: mean = 10 * log 2 / 16.
    w = np.zeros_like(y)
    w[0, 0, 0, 0] = 10.0
    one_px = np.concatenate([y, w], -1)
    assert np_(L.weighted_bce_loss(one_px, x))[0] == pytest.approx(10 * math.log(2) / 16)


def test_weighted_bce_without_weight_channel_says_how_to_fix():
    with pytest.raises(UnetError, match=r"\(B, H, W, 2\) = \[mask, weight map\]"):
        L.weighted_bce_loss(batch(A), np.zeros((1, 4, 4, 1), np.float32))


@pytest.mark.parametrize("name", ["bce", "dice", "bce+dice", "focal"])
def test_other_losses_ignore_the_weight_channel(name):
    rng = np.random.default_rng(3)
    y = batch(A, B)
    x = rng.normal(size=(2, 4, 4, 1)).astype(np.float32)
    with_weight = np.concatenate([y, 7 * np.ones_like(y)], -1)
    loss = L.get_loss(name, 1)
    assert float(np_(loss(with_weight, x))) == pytest.approx(float(np_(loss(y, x))), rel=1e-6)


def test_one_hot_y_true_is_rejected():
    with pytest.raises(UnetError, match="sparse labels, not one-hot"):
        L.bce_loss(np.zeros((1, 4, 4, 3), np.float32), np.zeros((1, 4, 4, 3)), 3)


def test_y_true_without_channel_axis_is_rejected():
    with pytest.raises(UnetError, match=r"add the channel axis"):
        L.dice_loss(np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4, 1), np.float32))


def test_channel_mismatch_is_reported():
    with pytest.raises(UnetError, match=r"outputs 1 channels but .* num_classes=3"):
        L.bce_loss(batch(A), np.zeros((1, 4, 4, 1), np.float32), 3)


# ---- multi-class ------------------------------------------------------------------------


def test_categorical_crossentropy_hand_value():
    logits = np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 1, 1, 3)
    label = np.array([[[[1.0]]]], np.float32)
    expected = -(2.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3)))  # -log softmax[1]
    assert np_(L.bce_loss(label, logits, 3))[0] == pytest.approx(expected, rel=1e-6)


def test_multiclass_dice_uses_foreground_classes_only():
    labels = np.zeros((1, 4, 4, 1), np.float32)
    labels[0, 0, :, 0] = 1  # class 1: row 0 (4 px)
    labels[0, 3, :, 0] = 2  # class 2: row 3 (4 px)
    assert np_(L.dice_loss(labels, onehot_logits(labels, 3), 3))[0] == pytest.approx(0, abs=1e-6)
    # Class 1 predicted on row 0 cols 0-1 only (half, Dice 2/3); class 2 exact (Dice 1).
    pred = labels.copy()
    pred[0, 0, 2:, 0] = 0
    got = np_(L.dice_loss(labels, onehot_logits(pred, 3), 3, smooth=0.0))[0]
    assert got == pytest.approx(1 - (2 / 3 + 1) / 2, abs=1e-6)
    # All-background truth and prediction: nothing to segment, loss 0 (class 0 is not scored).
    zeros = np.zeros_like(labels)
    assert np_(L.dice_loss(zeros, onehot_logits(zeros, 3), 3))[0] == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_multiclass_losses_are_finite_and_near_zero_when_perfect(name):
    labels = np.zeros((1, 4, 4, 1), np.float32)
    labels[0, :2, :2, 0] = 1
    labels[0, 2:, 2:, 0] = 2
    y = np.concatenate([labels, np.ones_like(labels)], -1)
    got = float(np_(L.get_loss(name, 3)(y, onehot_logits(labels, 3))))
    assert got == pytest.approx(0.0, abs=1e-5)


# ---- mixed precision --------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_losses_are_stable_on_bfloat16_logits(name):
    rng = np.random.default_rng(4)
    y = np.concatenate([batch(A, C), np.ones((2, 4, 4, 1), np.float32)], -1)
    x32 = (rng.normal(size=(2, 4, 4, 1)) * 40).astype(np.float32)  # many saturated logits
    x16 = ops.cast(ops.convert_to_tensor(x32), "bfloat16")
    fn = {
        "bce": L.bce_loss,
        "dice": L.dice_loss,
        "bce+dice": L.bce_dice_loss,
        "focal": L.focal_loss,
        "weighted-bce": L.weighted_bce_loss,
    }[name]
    got = np_(fn(y, x16))
    want = np_(fn(y, ops.cast(x16, "float32")))
    assert np.all(np.isfinite(got))
    assert ops.convert_to_numpy(fn(y, x16)).dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ---- factory and serialisation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("bce", L.BCELoss),
        ("dice", L.DiceLoss),
        ("bce+dice", L.BCEDiceLoss),
        ("BCE + Dice", L.BCEDiceLoss),
        ("focal", L.FocalLoss),
        ("weighted-bce", L.WeightedBCELoss),
        ("ce", L.BCELoss),
        ("ce+dice", L.BCEDiceLoss),
        ("weighted-ce", L.WeightedBCELoss),
    ],
)
def test_get_loss_builds_each_name(name, cls):
    loss = L.get_loss(name, 2)
    assert type(loss) is cls
    assert loss.num_classes == 2


def test_get_loss_rejects_unknown_names_listing_the_valid_ones():
    with pytest.raises(UnetError, match=r"unknown --loss 'dcie'; use one of: bce\+dice, bce, dice"):
        L.get_loss("dcie", 1)


@pytest.mark.parametrize("num_classes", [0, -1, 1.5, True])
def test_get_loss_rejects_bad_num_classes(num_classes):
    with pytest.raises(UnetError, match="num_classes must be an integer >= 1"):
        L.get_loss("bce", num_classes)


def test_needs_weight_map():
    assert L.needs_weight_map("weighted-bce") and L.needs_weight_map("weighted-ce")
    assert not L.needs_weight_map("bce+dice")


@pytest.mark.parametrize(
    "obj",
    [
        L.BCELoss(2),
        L.DiceLoss(1, smooth=0.5),
        L.BCEDiceLoss(3, smooth=2.0),
        L.FocalLoss(1, gamma=1.0, alpha=0.3),
        L.WeightedBCELoss(1),
        TM.DiceMetric(3),
        TM.IoUMetric(1, threshold=0.7),
    ],
    ids=lambda o: type(o).__name__,
)
def test_serialisation_round_trip(obj):
    config = keras.saving.serialize_keras_object(obj)
    assert config["registered_name"] == f"unet_lowered>{type(obj).__name__}"
    again = keras.saving.deserialize_keras_object(config)
    assert type(again) is type(obj)
    assert again.get_config() == obj.get_config()


# ---- one fit step ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "num_classes", "policy"),
    [
        ("bce+dice", 1, "float32"),
        ("weighted-bce", 1, "float32"),
        ("ce+dice", 3, "float32"),
        ("focal", 1, "mixed_bfloat16"),
    ],
)
def test_fit_logs_dice_and_val_dice(name, num_classes, policy):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, max(num_classes, 2), (4, 8, 8, 1)).astype(np.float32)
    y = labels
    if L.needs_weight_map(name):
        y = np.concatenate([labels, rng.uniform(1, 3, labels.shape).astype(np.float32)], -1)
    inputs = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(num_classes, 3, padding="same", dtype=policy)
    model = keras.Model(inputs, conv(inputs))
    model.compile(
        optimizer="adam",
        loss=L.get_loss(name, num_classes),
        metrics=[TM.DiceMetric(num_classes), TM.IoUMetric(num_classes)],
    )
    history = model.fit(x, y, batch_size=2, epochs=1, validation_data=(x, y), verbose=0).history
    assert {"loss", "dice", "iou", "val_loss", "val_dice", "val_iou"} <= set(history)
    assert all(np.isfinite(v[0]) for v in history.values())
    assert 0.0 <= history["val_dice"][0] <= 1.0


def test_compiled_model_saves_and_loads_with_its_loss_and_metrics(tmp_path):
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(inputs))
    model.compile(optimizer="adam", loss=L.get_loss("focal", 1), metrics=[TM.DiceMetric()])
    path = tmp_path / "model.keras"
    model.save(path)
    again = keras.saving.load_model(path, compile=True, safe_mode=True)
    assert isinstance(again.loss, L.FocalLoss) and again.loss.gamma == 2.0
