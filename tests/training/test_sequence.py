"""The training input pipeline: cache, batches, weight maps, the tf.data feed."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import shared_dataset
from data_fixtures import ids_of, make_pair, make_prepared, stub_weight
from unet_lowered.dataset.checks import mask_warnings
from unet_lowered.dataset.pairs import load_prepared
from unet_lowered.errors import SettingError, UnetError
from unet_lowered.io.images import write_png
from unet_lowered.preprocess import standardize
from unet_lowered.training.augment import AugmentConfig, mirrored_window, random_crop
from unet_lowered.training.cache import SampleCache
from unet_lowered.training.config import TrainConfig
from unet_lowered.training.feed import as_tf_dataset, lowest_priority
from unet_lowered.training.sequence import (
    EpochSync,
    Progressive,
    SegmentationSequence,
    augment_config,
    make_sequences,
)

# ----------------------------------------------------------------------------- cache and batches


@pytest.mark.parametrize(("rgb", "channels"), [(False, 1), (True, 3)])
def test_batches_shapes_dtypes_and_values(tmp_path: Path, rgb: bool, channels: int) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(5), meta={}, rgb=rgb))
    assert data.channels == channels
    cache = SampleCache(data, channels=channels, image_size=16)
    seq = SegmentationSequence(cache, data.ids, 2, augment=AugmentConfig(), shuffle=True)
    assert len(seq) == 3
    x, y = seq[0]
    assert x.shape == (2, 16, 16, channels) and x.dtype == np.float32
    assert y.shape == (2, 16, 16, 1) and y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 1.0}
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)  # standardised
    np.testing.assert_allclose(x.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
    assert seq[2][0].shape[0] == 1  # the last batch holds the rest
    with pytest.raises(IndexError):
        seq[3]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data needs TensorFlow")
def test_tf_dataset_view_yields_the_sequence_batches_of_the_current_epoch(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(5), meta={}))
    cache = SampleCache(data, channels=1, image_size=16)
    seq = SegmentationSequence(cache, data.ids, 2, augment=AugmentConfig(), shuffle=True)
    dataset = as_tf_dataset(seq)
    assert int(dataset.cardinality()) == 3  # Keras knows the steps per epoch
    for epoch in (0, 4):  # a new iterator per epoch reads the epoch set just before
        seq.set_epoch(epoch)
        got = [tuple(t.numpy() for t in batch) for batch in dataset]
        assert len(got) == 3 and got[2][0].shape[0] == 1
        for index, batch in enumerate(got):
            for actual, expected in zip(batch, seq[index], strict=True):
                np.testing.assert_array_equal(actual, expected)
    assert not np.array_equal(got[0][0], (seq.set_epoch(0), seq[0][0])[1])  # epochs differ


class _FailsAt:
    """A sequence of 3 tiny batches whose batch ``bad`` raises."""

    def __init__(self, bad: int):
        self.bad = bad

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int):
        if index == self.bad:
            raise ValueError(f"cannot make batch {index}")
        return np.full((1, 2, 2, 1), index, np.float32), np.zeros((1, 2, 2, 1), np.float32)


def _batch_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name == "unet-batches" and t.is_alive()]


def test_tf_dataset_view_raises_the_error_of_a_batch() -> None:
    import tensorflow as tf

    dataset = as_tf_dataset(_FailsAt(bad=2))
    seen = []
    with pytest.raises(tf.errors.OpError, match="cannot make batch 2"):
        for x, _ in dataset:
            seen.append(int(x.numpy()[0, 0, 0, 0]))
    assert seen == [0, 1]
    assert _batch_threads() == []


def test_tf_dataset_view_stops_its_thread_when_left_early() -> None:
    import gc

    dataset = as_tf_dataset(_FailsAt(bad=-1), lookahead=1)
    batches = [int(x.numpy()[0, 0, 0, 0]) for x, _ in dataset.take(1)]
    assert batches == [0]
    gc.collect()
    assert _batch_threads() == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities: Linux")
def test_lowest_priority_applies_to_the_calling_thread_only() -> None:
    import threading

    seen = {}

    def worker() -> None:
        seen["changed"] = lowest_priority()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, 0)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"changed": True, "nice": 19}
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


def test_validation_batches_are_the_cached_samples_in_order(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(3), meta={}))
    cache = SampleCache(data, channels=1, image_size=(12, 20))
    seq = SegmentationSequence(cache, ["case002", "case000"], 4)
    x, y = seq[0]
    for k, ident in enumerate(["case002", "case000"]):
        image, mask, _ = cache.sample(ident)
        np.testing.assert_array_equal(x[k], standardize(image))
        np.testing.assert_array_equal(y[k, ..., 0], mask)
    seq.on_epoch_begin()
    np.testing.assert_array_equal(seq[0][0], x)  # the same every epoch


def test_cache_matches_the_shared_preprocessing(tmp_path: Path) -> None:
    from unet_lowered.io.images import read_image
    from unet_lowered.preprocess import model_input, resize_mask

    data = load_prepared(make_prepared(tmp_path, ids_of(1), meta={}, size=(40, 30)))
    cache = SampleCache(data, channels=1, image_size=(20, 16), clahe=True)
    image, mask, weight = cache.sample("case000")
    expected = model_input(read_image(data.images["case000"]), 1, (20, 16), clahe=True)
    np.testing.assert_allclose(standardize(image), expected, atol=2e-4)  # 16-bit storage
    raw = resize_mask(read_image(data.masks["case000"]), (20, 16))
    np.testing.assert_array_equal(mask, raw > 0)
    assert weight is None
    assert cache.mask_values == [0, 255]
    assert cache.nbytes == 20 * 16 * 2 + 20 * 16  # uint16 image + uint8 mask


def test_cache_inverts_light_backgrounds_as_prediction_does(tmp_path: Path) -> None:
    from unet_lowered.io.images import read_image
    from unet_lowered.preprocess import model_input

    root = tmp_path / "flat"
    image = np.full((40, 30), 220, np.uint8)  # dark nuclei on a light background
    image[5:15, 5:15] = image[25:35, 10:20] = 40
    write_png(root / "images" / "b.png", image)
    write_png(root / "masks" / "b.png", np.where(image < 100, 255, 0).astype(np.uint8))
    data = load_prepared(root)
    cache = SampleCache(data, channels=1, image_size=(20, 16), invert_light=True)
    cached = standardize(cache.sample("b")[0])
    expected = model_input(read_image(data.images["b"]), 1, (20, 16), invert_light=True)
    np.testing.assert_allclose(cached, expected, atol=2e-4)
    assert cached.max() > 1.0  # the nuclei are the light minority now
    plain = model_input(read_image(data.images["b"]), 1, (20, 16))
    np.testing.assert_allclose(cached, -plain, atol=2e-4)


def test_mixed_sizes_in_resize_mode(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for k, size in enumerate([(40, 60), (17, 23), (64, 64)]):
        make_pair(root, f"s{k}", size=size, seed=k)
    data = load_prepared(root)
    cache = SampleCache(data, channels=1, image_size=32)
    x, y = SegmentationSequence(cache, data.ids, 3, augment=AugmentConfig())[0]
    assert x.shape == (3, 32, 32, 1) and y.shape == (3, 32, 32, 1)


def test_mixed_sizes_in_crop_mode_keep_full_size_and_pad_small_images(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    sizes = [(40, 60), (17, 23), (64, 64)]
    for k, size in enumerate(sizes):
        make_pair(root, f"s{k}", size=size, seed=k)
    data = load_prepared(root)
    cache = SampleCache(data, channels=3, image_size=24, input_mode="crop")
    for k, size in enumerate(sizes):
        assert cache.sample(f"s{k}")[0].shape == (*size, 3)
    train = SegmentationSequence(cache, data.ids, 3, augment=AugmentConfig(), shuffle=True)
    x, y = train[0]
    assert x.shape == (3, 24, 24, 3) and y.shape == (3, 24, 24, 1)
    val = SegmentationSequence(cache, data.ids, 3)
    np.testing.assert_array_equal(val[0][1], val[0][1])
    val.on_epoch_begin()
    first = val[0]
    val.on_epoch_begin()
    np.testing.assert_array_equal(val[0][0], first[0])  # fixed validation crops


def test_crops_are_standardised_as_the_whole_image_is_at_prediction(tmp_path: Path) -> None:
    from unet_lowered.io.images import read_image
    from unet_lowered.preprocess import model_input

    data = load_prepared(make_prepared(tmp_path, ids_of(2), meta={}, size=(40, 50)))
    cache = SampleCache(data, channels=1, image_size=(16, 24), input_mode="crop")
    val = SegmentationSequence(cache, data.ids, 2, seed=3)
    x, _ = val[0]
    for k, ident in enumerate(data.ids):
        # What tile-mode prediction feeds the network, cut to the validation crop.
        whole = model_input(read_image(data.images[ident]), 1, None)
        mask = np.zeros(whole.shape[:2], np.uint8)
        expected, _, _ = random_crop(whole, mask, (16, 24), np.random.default_rng([3, 0, k]))
        np.testing.assert_allclose(x[k], expected, atol=1e-3)  # 16-bit storage
        assert abs(float(x[k].std()) - 1.0) > 1e-3  # not standardised on its own


def test_crop_before_conversion_equals_crop_after(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(1), meta={}, size=(40, 50)))
    cache = SampleCache(
        data, channels=1, image_size=(16, 24), input_mode="crop", weight_fn=stub_weight
    )
    full = cache.sample("case000")
    cropped = cache.sample("case000", crop_rng=np.random.default_rng(4))
    expected = random_crop(full[0], full[1], (16, 24), np.random.default_rng(4), full[2])
    for a, b in zip(cropped, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert cropped[0].dtype == np.float32 and cropped[2].dtype == np.float32


def test_random_crop_keeps_image_and_mask_aligned() -> None:
    image = np.arange(10 * 12, dtype=np.float32).reshape(10, 12, 1)
    mask = np.arange(10 * 12, dtype=np.uint8).reshape(10, 12)
    weight = image[..., 0] * 2
    for seed in range(5):
        out_image, out_mask, out_weight = random_crop(
            image, mask, (4, 5), np.random.default_rng(seed), weight
        )
        assert out_image.shape == (4, 5, 1)
        np.testing.assert_array_equal(out_image[..., 0], out_mask)
        np.testing.assert_array_equal(out_weight, 2 * out_image[..., 0])


@pytest.mark.parametrize(
    ("pixel", "window"),
    [((30, 40), (22, 32)), ((2, 3), (0, 0)), ((63, 79), (48, 64))],  # centred; at the borders
)
def test_foreground_crop_is_centred_on_the_foreground_pixel(pixel, window) -> None:
    mask = np.zeros((64, 80), np.uint8)
    mask[pixel] = 1
    image = np.arange(64 * 80, dtype=np.float32).reshape(64, 80, 1)
    out_image, out_mask, _ = random_crop(
        image, mask, (16, 16), np.random.default_rng(0), foreground=True
    )
    top, left = window
    np.testing.assert_array_equal(out_image[..., 0], image[top : top + 16, left : left + 16, 0])
    assert out_mask.sum() == 1


def test_foreground_crop_of_an_empty_mask_is_a_uniform_window() -> None:
    mask = np.zeros((64, 80), np.uint8)
    image = np.arange(64 * 80, dtype=np.float32).reshape(64, 80, 1)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    a = random_crop(image, mask, (16, 16), rng_a, foreground=True)
    b = random_crop(image, mask, (16, 16), rng_b)
    np.testing.assert_array_equal(a[0], b[0])


def test_foreground_crops_in_the_training_sequence(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for k in range(4):  # 120x120 images whose box covers a small corner only
        make_pair(root, f"s{k}", size=(120, 120), seed=k)
    data = load_prepared(root)
    cache = SampleCache(data, channels=1, image_size=16, input_mode="crop")
    args = dict(augment=AugmentConfig.off(), shuffle=True, seed=1)
    always = SegmentationSequence(cache, data.ids, 4, foreground_crops=1.0, **args)
    _, y = always[0]
    assert all(y[k].any() for k in range(4))  # every window holds foreground
    plain = SegmentationSequence(cache, data.ids, 4, **args)
    off = SegmentationSequence(cache, data.ids, 4, foreground_crops=0.0, **args)
    for a, b in zip(plain[0], off[0], strict=True):  # 0 draws nothing: the same batches
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SettingError, match=r"foreground-crops is a probability in \[0, 1\]"):
        TrainConfig(foreground_crops=1.5).validate()


def test_validation_windows_are_centred_on_foreground_when_training_crops_are(
    tmp_path: Path,
) -> None:
    """Sparse objects: each validation image's fixed window holds its foreground, so an
    all-background model cannot score Dice 1 on empty windows; dense data: unchanged."""
    root = tmp_path / "flat"
    for k in range(4):  # 120x120 images whose box covers a small corner only
        make_pair(root, f"s{k}", size=(120, 120), seed=k)
    data = load_prepared(root)
    split = {"train": data.ids[:2], "val": data.ids[2:]}
    for rate, centred in ((0.33, True), (0.0, False)):
        cfg = TrainConfig(image_size=16, input_mode="crop", batch_size=2, foreground_crops=rate)
        _, val = make_sequences(data, split, cfg.validate(), workers=1)
        assert val.foreground_crops == (1.0 if centred else 0.0)
        _, y = val[0]
        if centred:
            assert all(y[k].any() for k in range(2))
        np.testing.assert_array_equal(val[0][1], y)  # the same windows every time


def test_random_crop_pads_by_reflection() -> None:
    image = np.arange(3, dtype=np.float32).reshape(1, 3, 1) * np.ones((3, 1, 1), np.float32)
    mask = image[..., 0].astype(np.uint8)
    out_image, out_mask, _ = random_crop(image, mask, (3, 7), np.random.default_rng(0))
    np.testing.assert_array_equal(out_mask[0], [2, 1, 0, 1, 2, 1, 0])  # reflect, edge kept once
    np.testing.assert_array_equal(out_image[..., 0], out_mask)


def test_weight_channel_moves_with_the_mask(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(4), meta={}))
    cache = SampleCache(data, channels=1, image_size=16, weight_fn=stub_weight)
    seq = SegmentationSequence(
        cache, data.ids, 4, augment=AugmentConfig(flip_ud=True), shuffle=True
    )
    _, y = seq[0]
    assert y.shape == (4, 16, 16, 2)
    np.testing.assert_array_equal(y[..., 1], 1.0 + 9.0 * y[..., 0])
    assert cache.nbytes == 4 * 16 * 16 * (2 + 1 + 2)


def test_weight_maps_need_binary_masks(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(1), meta={}))
    with pytest.raises(UnetError, match="need binary masks"):
        SampleCache(data, channels=1, image_size=8, num_classes=3, weight_fn=stub_weight)


@pytest.mark.parametrize(
    ("stored", "num_classes", "expected"),
    [
        ((0, 1, 2), 3, {0, 1, 2}),  # already class indices
        ((0, 100, 200), 3, {0, 1, 2}),  # mapped in ascending order
        ((0, 100, 200), 1, {0, 1}),  # binary: non-zero is foreground
    ],
)
def test_multiclass_targets(tmp_path: Path, stored: tuple, num_classes: int, expected: set) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(2), meta={}, mask_values=stored))
    cache = SampleCache(data, channels=1, image_size=16, num_classes=num_classes)
    _, y = SegmentationSequence(cache, data.ids, 2)[0]
    assert set(np.unique(y).tolist()) == expected
    assert cache.mask_values == list(stored)


def test_too_many_mask_values_for_the_classes(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(1), meta={}, mask_values=(0, 5, 9, 12)))
    with pytest.raises(UnetError, match=r"4 distinct values \(0, 5, 9, 12\) but num_classes is 3"):
        SampleCache(data, channels=1, image_size=16, num_classes=3)


def test_mask_size_mismatch_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    make_pair(root, "a", size=(20, 20))
    write_png(root / "masks" / "a.png", np.zeros((10, 20), np.uint8))
    data = load_prepared(root)
    with pytest.raises(UnetError, match=r"a\.png: mask is 20x10 but its image a\.png is 20x20"):
        SampleCache(data, channels=1, image_size=8)


def test_lazy_cache_gives_the_same_samples(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(3), meta={}))
    eager = SampleCache(data, channels=1, image_size=16, weight_fn=stub_weight)
    lazy = SampleCache(data, channels=1, image_size=16, weight_fn=stub_weight, max_bytes=100)
    assert lazy.lazy and not eager.lazy
    assert "over the cache limit" in lazy.notes[0]
    assert lazy.foreground == eager.foreground
    for ident in data.ids:
        for a, b in zip(eager.sample(ident), lazy.sample(ident), strict=True):
            np.testing.assert_array_equal(a, b)


def test_sequence_is_reproducible_and_resumable(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(6), meta={}))
    cache = SampleCache(data, channels=1, image_size=16)

    def seq(**kw):
        return SegmentationSequence(
            cache, data.ids, 4, augment=AugmentConfig(), shuffle=True, seed=3, **kw
        )

    a, b = seq(), seq(workers=2)
    for i in range(len(a)):
        for u, v in zip(a[i], b[i], strict=True):
            np.testing.assert_array_equal(u, v)
    epoch0 = a[0][0]
    # What Keras does: on_epoch_end once before training, on_epoch_begin before each epoch.
    a.on_epoch_end()
    for epoch in range(3):
        a.on_epoch_begin()
        assert a.epoch == epoch
        a.on_epoch_end()
    resumed = seq(epoch=2)
    resumed.on_epoch_begin()
    assert resumed.epoch == 2
    for u, v in zip(a[1], resumed[1], strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0][0], epoch0)  # another epoch, other order and augmentation
    assert sorted(a._order) == sorted(data.ids)
    # A callback may set the epoch itself; the next on_epoch_begin keeps it.
    a.set_epoch(0)
    a.on_epoch_begin()
    np.testing.assert_array_equal(a[0][0], epoch0)


def test_fit_trains_on_each_epochs_own_batches(tmp_path: Path) -> None:
    import keras

    data = load_prepared(make_prepared(tmp_path, ids_of(4), meta={}))
    cache = SampleCache(data, channels=1, image_size=8)
    train = SegmentationSequence(cache, data.ids, 2, augment=AugmentConfig(), shuffle=True)
    expected = {(e, i): train_batch(train, e, i) for e in range(1, 3) for i in range(2)}
    seen: list[np.ndarray] = []

    class Spy(keras.layers.Layer):
        def call(self, x):
            if not isinstance(x, keras.KerasTensor):
                seen.append(keras.ops.convert_to_numpy(x))
            return x

    model = keras.Sequential([keras.Input((8, 8, 1)), Spy(), keras.layers.Conv2D(1, 1)])
    model.compile("sgd", "mse", run_eagerly=True)
    train.set_epoch(1)
    model.fit(
        train, epochs=3, initial_epoch=1, shuffle=False, verbose=0, callbacks=[EpochSync(train)]
    )
    assert len(seen) == 4
    for got, key in zip(seen, sorted(expected), strict=True):
        np.testing.assert_array_equal(got, expected[key])


def train_batch(seq: SegmentationSequence, epoch: int, index: int) -> np.ndarray:
    seq.set_epoch(epoch)
    return seq[index][0]


def test_mirrored_window_pairs_a_target_window_with_its_mirrored_context() -> None:
    """A valid-padding pair from a whole image: the target is a window of the target
    map, the input the window of the image reflect-padded by the margin whose central
    part that target is; over many draws every pixel, the corners too, is a target."""
    image = np.arange(12 * 14, dtype=np.float32).reshape(12, 14, 1)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect")  # margins of 4 and 4
    rng = np.random.default_rng(0)
    covered = np.zeros((12, 14), int)
    for _ in range(400):
        x, y = mirrored_window(image, image + 1000, (4, 6), rng)
        top, left = divmod(int(y[0, 0, 0]) - 1000, 14)
        assert x.shape == (12, 14, 1) and y.shape == (4, 6, 1)
        np.testing.assert_array_equal(y, image[top : top + 4, left : left + 6] + 1000)
        np.testing.assert_array_equal(x, padded[top : top + 12, left : left + 14])
        np.testing.assert_array_equal(x[4:8, 4:10], y - 1000)  # the target's own pixels
        covered[top : top + 4, left : left + 6] += 1
    assert covered.min() > 0 and covered[0, 0] > 0 and covered[-1, -1] > 0
    assert covered[5, 6] > covered[0, 0]  # the borders about half as often as the middle


def test_whole_images_at_the_output_size_are_mirror_padded_to_the_input(tmp_path: Path) -> None:
    """``input_size`` (valid padding on whole images, cached at the output size): the
    target is the whole mask and the input the standardised image reflect-padded to the
    network's input, as prediction pads it; progressive epochs do the same at half size."""
    data = load_prepared(make_prepared(tmp_path, ids_of(2), meta={}))
    cache = SampleCache(data, channels=1, image_size=(8, 10))
    plain_x, plain_y = SegmentationSequence(cache, data.ids, 2)[0]
    seq = SegmentationSequence(cache, data.ids, 2, target_size=(8, 10), input_size=(16, 16))
    x, y = seq[0]
    assert x.shape == (2, 16, 16, 1) and y.shape == (2, 8, 10, 1)
    np.testing.assert_array_equal(y, plain_y)
    np.testing.assert_allclose(x, np.pad(plain_x, ((0, 0), (4, 4), (3, 3), (0, 0)), "reflect"))
    small = Progressive(1, (12, 12), (4, 6))
    x, y = SegmentationSequence(
        cache, data.ids, 2, target_size=(8, 10), input_size=(16, 16), progressive=small
    )[0]
    assert x.shape == (2, 12, 12, 1) and y.shape == (2, 4, 6, 1)
    with pytest.raises(UnetError, match="input_size needs a target_size equal"):
        SegmentationSequence(cache, data.ids, 2, target_size=(4, 4), input_size=(16, 16))


def test_valid_padding_targets_reach_the_border(tmp_path: Path) -> None:
    """With a target size (valid padding) the targets are windows of the whole mask,
    found anywhere in it: foreground only in a 2-px frame at the image's border, which
    the central 8x10 of a 16x16 input never holds (every target was empty when the
    target was the centre crop), is a target in some batches, whole images and crops
    alike."""
    mask = np.zeros((16, 16), np.uint8)
    mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = 255, 255, 255, 255
    for ident in ("a", "b"):
        write_png(tmp_path / "d" / "images" / f"{ident}.png", np.full((16, 16), 90, np.uint8))
        write_png(tmp_path / "d" / "masks" / f"{ident}.png", mask)
    data = load_prepared(tmp_path / "d")
    framed = (mask > 0).astype(np.float32)
    windows = {framed[t : t + 8, c : c + 10].tobytes() for t in range(9) for c in range(7)}
    for mode in ("resize", "crop"):
        cache = SampleCache(data, channels=1, image_size=16, input_mode=mode)
        seq = SegmentationSequence(cache, data.ids, 2, shuffle=True, target_size=(8, 10))
        found = 0.0
        for epoch in range(20):
            seq.set_epoch(epoch)
            x, y = seq[0]
            assert x.shape == (2, 16, 16, 1) and y.shape == (2, 8, 10, 1)
            assert all(t[..., 0].tobytes() in windows for t in y), mode
            found += float(y.sum())
        assert found > 0, mode


def test_sequence_refuses_bad_arguments(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(2), meta={}))
    cache = SampleCache(data, channels=1, image_size=16)
    with pytest.raises(UnetError, match="not in the cache: nope"):
        SegmentationSequence(cache, ["nope"])
    with pytest.raises(UnetError, match="empty split"):
        SegmentationSequence(cache, [])
    with pytest.raises(UnetError, match="must fit in the input size 16x16"):
        SegmentationSequence(cache, data.ids, target_size=(20, 8))


def test_drop_remainder(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(5), meta={}))
    cache = SampleCache(data, channels=1, image_size=8)
    assert len(SegmentationSequence(cache, data.ids, 2, drop_remainder=True)) == 2
    assert len(SegmentationSequence(cache, data.ids, 8, drop_remainder=True)) == 1


def test_make_sequences_from_train_settings(tmp_path: Path) -> None:
    data = load_prepared(make_prepared(tmp_path, ids_of(5), meta={}))
    cfg = TrainConfig(image_size=16, batch_size=2, seed=0, rotate=5.0, scale=0.2, loss="bce+dice")
    train, val = make_sequences(data, data.split(0.4, 0), cfg, epoch=3)
    assert train.augment.rotation == 5.0 and train.augment.scale == (0.8, 1.2)
    assert train.epoch == 3 and train.shuffle and val.augment is None
    assert train.cache is val.cache and len(val.ids) == 2
    assert train[0][0].shape == (2, 16, 16, 1)


@pytest.mark.realdata
def test_jsrt_lungs_pipeline(tmp_path: Path) -> None:
    source = shared_dataset("jsrt-lungs") / "train_images"
    root = tmp_path / "jsrt"
    for case in sorted(source.iterdir())[:40]:
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        shutil.copy(case / "images" / f"{case.name}.png", root / "images")
        shutil.copy(case / "masks" / f"{case.name}.png", root / "masks")
    data = load_prepared(root)
    assert len(data.ids) == 40 and data.channels == 1
    cache = SampleCache(data, channels=1, image_size=128)
    assert cache.mask_values == [0, 255]
    assert mask_warnings(cache) == []
    assert 0.15 < np.mean(list(cache.foreground.values())) < 0.45  # two lungs
    x, y = SegmentationSequence(cache, data.ids, 8, augment=AugmentConfig(), shuffle=True)[0]
    assert x.shape == (8, 128, 128, 1) and y.shape == (8, 128, 128, 1)


def test_augment_config_follows_the_train_settings() -> None:
    cfg = augment_config(TrainConfig())
    assert cfg.intensity and cfg.noise and cfg.clahe_p == 0.25  # the defaults
    assert (cfg.rotation, cfg.scale, cfg.shift) == (10.0, (0.8, 1.2), 0.08)
    assert not (cfg.flip_lr or cfg.flip_ud)
    off = augment_config(TrainConfig(intensity=False, scale=0.0, rotate=0.0))
    assert not off.intensity and not off.noise  # --no-intensity also stops the noise
    assert (off.scale, off.rotation) == ((1.0, 1.0), 0.0)
