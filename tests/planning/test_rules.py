"""Each planning rule on a constructed fingerprint, and the duration parser and budget."""

from __future__ import annotations

import dataclasses
import types

import pytest

from unet_lowered.errors import SettingError
from unet_lowered.planning import budget, callbacks, rules
from unet_lowered.planning.fingerprint import Fingerprint

KEPT = {"p": 0.5, "effect": 0.1, "kept": True}
CHANGED = {"p": 0.001, "effect": 0.8, "kept": False}


def _sym(layout: dict, texture: dict) -> dict:
    return {
        "layout": {k: layout for k in ("flip_lr", "flip_ud", "rot90")},
        "texture": {k: {"asymmetry": 0.01, **texture} for k in ("flip_lr", "flip_ud", "rot90")},
    }


BASE = Fingerprint(
    n_images=100,
    n_sampled=50,
    sizes={"median_hw": [224, 224], "min_hw": [224, 224], "max_hw": [224, 224],
           "median_longer": 224, "spread": 1.0},
    channels=1,
    gray_as_rgb=0.0,
    bit_depth=8,
    num_classes=1,
    intensity={"foreground": {"mean": 0.4, "std": 0.1, "p01": 0.1, "p99": 0.8},
               "background": {"mean": 0.6, "std": 0.2, "p01": 0.0, "p99": 1.0},
               "contrast": -1.0},
    foreground_fraction=0.3,
    objects_per_image=2.0,
    object_area={"median": 7000.0, "p05": 5000.0, "p95": 10000.0, "median_diameter": 94.0,
                 "median_fraction": 0.14},
    touching_fraction=0.0,
    holes_fraction=0.0,
    symmetry=_sym(CHANGED, {"kept": True}),
)  # fmt: skip


def fp(**changes) -> Fingerprint:
    return dataclasses.replace(BASE, **changes)


def _sizes(h: int, w: int, lo: int | None = None) -> dict:
    lo = lo or min(h, w)
    return {"median_hw": [h, w], "min_hw": [lo, lo], "max_hw": [h, w],
            "median_longer": max(h, w), "spread": 1.0}  # fmt: skip


SMALL_OBJECTS = {"median": 400.0, "p05": 50.0, "p95": 2000.0, "median_diameter": 22.0,
                 "median_fraction": 0.002}  # fmt: skip


# ---------------------------------------------------------------- input size and mode


def test_small_images_train_whole_at_their_size() -> None:
    planned = rules.input_rule(fp(sizes=_sizes(100, 100)))
    assert planned["input_mode"].value == "resize"
    assert planned["image_size"].value == 96  # rounded down to a multiple of 16
    assert rules.input_rule(fp())["image_size"].value == 224


def test_large_images_with_small_objects_are_cropped() -> None:
    planned = rules.input_rule(fp(sizes=_sizes(512, 512), object_area=SMALL_OBJECTS))
    assert planned["input_mode"].value == "crop"
    assert planned["image_size"].value == 256  # capped at PATCH_CAP
    planned = rules.input_rule(fp(sizes=_sizes(600, 800, lo=40), object_area=SMALL_OBJECTS))
    assert planned["image_size"].value == 256  # one 40 px image does not shrink the patch
    assert "smaller images are mirror-padded" in planned["image_size"].reason
    planned = rules.input_rule(fp(sizes=_sizes(200, 900), object_area=SMALL_OBJECTS))
    assert planned["image_size"].value == 192  # the median's shorter side, rounded down
    assert "native resolution" in planned["input_mode"].reason


def test_resizing_says_when_it_stretches_or_rescales() -> None:
    elongated = rules.input_rule(fp(sizes=_sizes(64, 1024)))["input_mode"].reason
    assert elongated.endswith("the median image is 1024x64, so images are stretched to a square")
    mixed = {**_sizes(64, 64), "max_hw": [1500, 1500], "spread": 23.4}
    reason = rules.input_rule(fp(sizes=mixed))["input_mode"].reason
    assert reason.endswith("images of other sizes (up to 1500 px) are resized to it")
    assert rules.input_rule(fp(sizes=_sizes(224, 224)))["input_mode"].reason.endswith("own size")


def test_large_images_of_whole_organs_are_resized() -> None:
    planned = rules.input_rule(fp(sizes=_sizes(1024, 1024)))
    assert planned["input_mode"].value == "resize"
    assert planned["image_size"].value == rules.RESIZE_CAP


def test_inference_matches_training() -> None:
    assert rules.inference_rule("crop").value == "tile"
    assert rules.inference_rule("resize").value == "resize"


def test_normalisation_is_per_image_without_clahe() -> None:
    planned = rules.normalisation_rule(fp(bit_depth=16))
    assert planned["clahe"].value is False
    assert "16-bit gray" in planned["normalisation"].reason
    empty = {**BASE.intensity, "foreground": None, "contrast": None}  # masks all empty
    reason = rules.normalisation_rule(fp(intensity=empty))["normalisation"].reason
    assert reason.startswith("8-bit gray images (no foreground and background to compare")
    assert "(," not in reason and "None" not in reason


# ---------------------------------------------------------------- flips and rotations


def test_asymmetric_layout_gets_no_flips_and_small_rotations() -> None:
    planned = rules.augmentation_rule(fp(), "resize")
    assert planned["flip_lr"].value is False and planned["flip_ud"].value is False
    assert planned["rotate"].value == 10.0
    assert planned["tta"].value is None


def test_rotation_free_data_gets_flips_rotations_and_dihedral_tta() -> None:
    planned = rules.augmentation_rule(fp(symmetry=_sym(KEPT, {"kept": True})), "resize")
    assert planned["flip_lr"].value and planned["flip_ud"].value
    assert planned["rotate"].value == 180.0
    assert planned["tta"].value == "dihedral"


def test_crops_are_judged_by_their_texture() -> None:
    # whole-image layout asymmetric, local texture isotropic: crops may be flipped
    planned = rules.augmentation_rule(fp(symmetry=_sym(CHANGED, {"kept": True})), "crop")
    assert planned["flip_lr"].value and planned["rotate"].value == 180.0
    assert "texture" in planned["flip_lr"].reason


def test_flips_without_turns_and_untestable_data() -> None:
    sym = _sym(KEPT, {"kept": True})
    sym["layout"]["rot90"] = CHANGED
    planned = rules.augmentation_rule(fp(symmetry=sym), "resize")
    assert planned["rotate"].value == 10.0 and planned["tta"].value == "flips"
    unknown = {"p": None, "effect": None, "kept": None}
    planned = rules.augmentation_rule(fp(symmetry=_sym(unknown, {"kept": True})), "resize")
    assert planned["flip_lr"].value is False and "too few images" in planned["flip_lr"].reason


# ---------------------------------------------------------------- loss, batch, schedule


def test_the_loss_is_cross_entropy_plus_dice_and_touching_objects_name_the_weighted_one() -> None:
    touching = rules.loss_rule(fp(touching_fraction=0.3))
    assert touching.value == "bce+dice"
    assert "30%" in touching.reason and "--loss weighted-bce" in touching.reason
    separate = rules.loss_rule(fp(touching_fraction=0.05))
    assert separate.value == "bce+dice" and "weighted" not in separate.reason
    several = rules.loss_rule(fp(touching_fraction=0.3, num_classes=3))
    assert several.value == "bce+dice" and "several classes" in several.reason


def test_batch_size_rules() -> None:
    assert rules.batch_rule(fp(), 224, "resize", None).value == 4
    # 10 images of 64x64: 5% of the data is 0.5 images, so the minimum of 2
    tiny = fp(n_images=10, sizes=_sizes(64, 64))
    assert rules.batch_rule(tiny, 64, "resize", None).value == 2
    assert rules.batch_rule(tiny, 64, "resize", None).reason.startswith(
        "2: the smallest batch planned (nnU-Net's minimum; 5% of this data's pixels is less"
    )
    forty = fp(n_images=40, sizes=_sizes(64, 64))  # 5% is 2 samples: the cap itself
    assert rules.batch_rule(forty, 64, "resize", None).reason.startswith("2: at most 5%")
    few_updates = rules.batch_rule(fp(), 224, "resize", 300)
    assert few_updates.value == 2 and "300 updates" in few_updates.reason
    assert rules.batch_rule(fp(), 224, "resize", 5000).value == 4


def test_epochs_fitted_to_the_budget() -> None:
    # 40 train / 8 val, batch 4, 0.5 s a step: 10 steps + 2 * 0.5 / 3 + 0.5 = 5.83 s an epoch
    planned = rules.schedule_rule(40, 8, 4, 0.5, 100.0)
    assert planned["epochs"].value == 15  # 90 s (90% of the budget) / 5.83 s
    assert planned["patience"].value == 15
    assert "90% of the 100 s budget" in planned["epochs"].reason
    too_short = rules.schedule_rule(40, 8, 4, 0.5, 5.0)["epochs"]  # 4.5 s < one epoch
    assert too_short.value == 1 and "too short to train: give --time-budget 65s" in too_short.reason
    planned = rules.schedule_rule(40, 8, 4, 0.5, 3000.0)
    assert planned["epochs"].value == rules.MAX_EPOCHS
    assert planned["patience"].value == 100
    assert rules.schedule_rule(40, 8, 4, 10.0, 10.0)["epochs"].value == 1  # at least one


def test_progressive_resizing_for_whole_images_only() -> None:
    assert rules.progressive_rule("resize", 224).value == rules.PROGRESSIVE == 0.5
    assert rules.progressive_rule("resize", 128).value == 0.5
    assert rules.progressive_rule("resize", 96).value == 0.0  # half would be 48 px
    crop = rules.progressive_rule("crop", 256)
    assert crop.value == 0.0 and "half-size crops did not help" in crop.reason
    # the reason names the half size trained: 208 px halves to 96, not 104
    assert "whole images of 208 px, the first half of the epochs at 96 px" in (
        rules.progressive_rule("resize", 208).reason
    )


def test_progressive_resizing_with_valid_padding_judges_and_halves_the_output() -> None:
    """Valid padding trains whole images at the output size: 396 (output 212) halves to
    output 100 (input 284); 236 (output 52, 64-px images) is too small, though its input
    passes 128 px."""
    planned = rules.progressive_rule("resize", 396, 4, "valid")
    assert planned.value == 0.5
    assert "whole images of 212 px, the first half of the epochs at 100 px (input 284)" in (
        planned.reason
    )
    assert rules.progressive_rule("resize", 236, 4, "valid").value == 0.0


def test_foreground_crops_for_crops_of_sparse_foreground_only() -> None:
    crop = rules.foreground_crops_rule(fp(foreground_fraction=0.1), "crop")
    assert crop.value == rules.FOREGROUND_CROPS == 0.33 and "nnU-Net" in crop.reason
    dense = rules.foreground_crops_rule(fp(foreground_fraction=0.78), "crop")  # EM cells
    assert dense.value == 0.0 and "78% of the pixels" in dense.reason
    assert rules.foreground_crops_rule(fp(foreground_fraction=0.1), "resize").value == 0.0


def test_epochs_with_progressive_resizing_are_cheaper_and_capped() -> None:
    # 40 train / 8 val, batch 4, 0.5 s a step, half the epochs at 0.35 of the step and
    # not validated: 10 * 0.5 * 0.675 + 2 * 0.5 / 3 * 0.5 + 0.5 = 4.042 s an epoch;
    # 90 s / 4.042 s = 22
    planned = rules.schedule_rule(40, 8, 4, 0.5, 100.0, progressive=0.5)
    assert planned["epochs"].value == 22 and "half-size epochs" in planned["epochs"].reason
    # A long budget is not filled: about 10200 samples, 128 epochs of 80 images.
    planned = rules.schedule_rule(80, 8, 4, 0.5, 3000.0, progressive=0.5)
    assert planned["epochs"].value == round(rules.WHOLE_IMAGE_SAMPLES / 80) == 128
    assert "enough" in planned["epochs"].reason
    # JSRT: 170 training images -> 60 epochs on a fast machine; on a slower one the
    # budget decides: 540 s / (43 * 0.3 * 0.675 + 8 * 0.3 / 3 * 0.5 + 0.5) s = 56.
    jsrt = rules.schedule_rule(170, 30, 4, 0.17, 600.0, 0.5)["epochs"]
    assert jsrt.value == 60 and "enough" in jsrt.reason
    slow = rules.schedule_rule(170, 30, 4, 0.3, 600.0, 0.5)["epochs"]
    assert slow.value == 56 and "budget" in slow.reason
    # Without progressive resizing the budget is filled: 540 s / (43 * 0.17 + 8 * 0.17 / 3 + 0.5) s.
    assert rules.schedule_rule(170, 30, 4, 0.17, 600.0)["epochs"].value == 65
    # A measured half-size step replaces the 0.35: at 0.15 of 0.3 s (0.5 of it),
    # 540 s / (43 * 0.3 * 0.75 + 8 * 0.3 / 3 * 0.5 + 0.5) s = 51 epochs instead of 56.
    measured = rules.schedule_rule(170, 30, 4, 0.3, 600.0, 0.5, half_step_s=0.15)["epochs"]
    assert measured.value == 51 and "measured 0.50 of a full one" in measured.reason
    assert "taken as 0.35 of a full one" in slow.reason


def test_light_backgrounds_are_not_inverted_and_mixed_polarity_names_the_option() -> None:
    def pol(dark: int, light: int, agree: int) -> Fingerprint:
        return fp(polarity={"dark_objects": dark, "light_objects": light, "median_agrees": agree})

    def reason(*counts: int) -> str:
        planned = rules.polarity_rule(pol(*counts))
        assert planned.value is False
        return planned.reason

    mixed = reason(10, 40, 50)  # DSB2018's sample
    assert "10 of 50 sampled images show dark objects" in mixed
    assert "tells 50 of 50 apart" in mixed and "--invert-light" in mixed
    assert "0.8720 -> 0.8639" in mixed  # why it is not planned
    assert "one polarity" in reason(50, 0, 50)  # chest X-rays: dark lungs
    assert "one polarity" in reason(0, 24, 24)  # EM: light cells
    # 2 of 50 is under 5% (3 images): one polarity with a few odd images
    assert "one polarity" in reason(2, 48, 50)
    assert "--invert-light" in reason(3, 47, 50)
    # the median must tell 95% apart: 47 of 50 does not
    assert "only 47 of 50" in reason(10, 40, 47)
    assert "--invert-light" in reason(10, 40, 48)
    assert "predates" in rules.polarity_rule(fp()).reason  # a plan written before the check
    assert "one polarity" in reason(0, 0, 0)  # no foreground at all


def test_postprocess_candidates() -> None:
    assert rules.postprocess_rule(fp()).value == ["keep_largest 2", "fill_holes"]
    many = rules.postprocess_rule(fp(objects_per_image=30.0, holes_fraction=0.5))
    assert many.value == ["min_area"]
    cells = rules.postprocess_rule(fp(objects_per_image=40.0, touching_fraction=0.84))
    assert cells.value == ["fill_holes", "min_area", "watershed", "threshold"]
    assert "84% of the objects behind thin gaps" in cells.reason
    # at the rule's bound (DSB2018 nuclei: 25%, under it)
    assert "watershed" in rules.postprocess_rule(fp(touching_fraction=0.5)).value
    assert "watershed" not in rules.postprocess_rule(fp(touching_fraction=0.49)).value


def test_plan_settings_uses_the_measured_step_and_the_users_batch() -> None:
    calls = []

    def step_time(values):
        calls.append((values["batch_size"], values["image_size"]))
        return 0.5 if values["image_size"] == 224 else 0.1  # the 112-px step: 0.1 s

    settings, advice = rules.plan_settings(fp(n_images=40), 100.0, step_time, n_val=8)
    assert set(settings) >= {"input_mode", "image_size", "flip_lr", "loss", "batch_size",
                             "epochs", "patience", "time_budget"}  # fmt: skip
    assert set(advice) == {"inference", "normalisation", "tta", "postprocess"}
    assert settings["batch_size"].value == 2  # 180 updates: batch 2
    # Whole 224 px images: progressive resizing, so the half-size step is measured too,
    # at the planned batch.
    assert calls == [(4, 224), (2, 112)]
    assert settings["progressive"].value == 0.5
    assert settings["foreground_crops"].value == 0.0  # whole images
    # batch 2: 0.25 s a step (scaled), 0.1 s at half size (measured, 0.4 of it):
    # 20 steps * 0.25 * (0.5 * 0.4 + 0.5) + 4 * 0.25 / 3 * 0.5 + 0.5 = 4.17 s -> 21 epochs
    assert settings["epochs"].value == 21
    assert "their steps measured 0.40 of a full one" in settings["epochs"].reason
    calls.clear()
    settings, _ = rules.plan_settings(fp(n_images=40), 100.0, step_time, 8, {"batch_size": 8})
    assert calls == [(8, 224), (8, 112)]
    # A budget whose cap holds even at full-size cost: no second measurement (the
    # epochs are the cap's, 255 of 40 images, whatever a half-size step costs).
    calls.clear()
    settings, _ = rules.plan_settings(fp(n_images=40), 3000.0, step_time, n_val=8)
    assert calls == [(4, 224)] and settings["epochs"].value == 255
    assert all(isinstance(v.reason, str) and v.reason for v in settings.values())
    settings, _ = rules.plan_settings(fp(), 100.0, None, n_val=8)
    assert "epochs" not in settings


# ---------------------------------------------------------------- durations and the budget


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10m", 600.0), ("90s", 90.0), ("1h", 3600.0), ("1.5h", 5400.0), (45, 45.0), ("2 min", 120)],
)
def test_parse_duration(text, seconds) -> None:
    assert budget.parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["soon", "-1m", "0", "10 days", True, float("inf"), float("nan"), 10**400]
)
def test_parse_duration_refuses(text) -> None:
    with pytest.raises(SettingError, match="time-budget must be a positive duration"):
        budget.parse_duration(text)


def test_format_duration() -> None:
    assert [budget.format_duration(s) for s in (600, 90, 5400)] == ["10m", "90s", "1.5h"]


def test_time_budget_stops_before_an_epoch_would_pass_it(monkeypatch, capsys) -> None:
    """Also: a line after each epoch says how much of the budget is left (a log showed
    only Keras' "Epoch N/41" although the budget would stop it at 28)."""
    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock[0])
    callback = callbacks.TimeBudget(deadline=100.0, margin=1.0)
    model = types.SimpleNamespace(stop_training=False)
    callback.set_model(model)
    callback.set_params({"epochs": 50})
    for epoch in range(50):
        callback.on_epoch_begin(epoch)
        clock[0] += 30.0  # each epoch takes 30 s
        callback.on_epoch_end(epoch)
        if model.stop_training:
            break
    assert callback.stopped_epoch == 3 and clock[0] == 90.0  # a 4th would end at 120
    assert capsys.readouterr().err.splitlines() == [
        "time budget: 70 s left after epoch 1, about 2 more epoch(s) of 30 s",
        "time budget: 40 s left after epoch 2, about 1 more epoch(s) of 30 s",
        "time budget: stopping after epoch 3 (an epoch takes about 30 s, 10 s are left)",
    ]


def test_time_budget_stops_within_an_epoch_that_would_overrun(monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock[0])
    callback = callbacks.TimeBudget(deadline=100.0, margin=1.0, first_reserve=10.0)
    model = types.SimpleNamespace(stop_training=False)
    callback.set_model(model)
    callback.set_params({"epochs": 5})
    callback.on_train_begin()
    steps_done = []
    for epoch, step_s in enumerate((5.0, 10.0)):  # the machine gets slower in epoch 2
        callback.on_epoch_begin(epoch)
        for step in range(8):
            clock[0] += step_s
            callback.on_train_batch_end(step)
            if model.stop_training:
                break
        steps_done.append(step + 1)
        clock[0] += 2.5  # validation and checkpoints: the tail is 2 x 2.5 s
        callback.on_epoch_end(epoch)
        if model.stop_training:
            break
    # epoch 1 ends at 42.5 (tail 5 s); in epoch 2, after the step ending at 92.5, another
    # 10 s step and the tail would end at 107.5: it stops there and validates by 95
    assert steps_done == [8, 5] and callback.stopped_epoch == 2
    assert clock[0] == pytest.approx(95.0)


def test_time_budget_stopping_in_the_first_epoch_says_so(monkeypatch, capsys) -> None:
    """No epoch has ended yet, so no epoch time is claimed ('about 0 s' before)."""
    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock[0])
    callback = callbacks.TimeBudget(deadline=10.0, margin=1.0, first_reserve=2.0)
    callback.set_model(types.SimpleNamespace(stop_training=False))
    callback.set_params({"epochs": 5})
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    clock[0] = 7.0
    callback.on_train_batch_end(0)  # 7 + 7 + 2 > 10
    assert capsys.readouterr().err == (
        "time budget: stopping within the epoch after step 1 (the first epoch, 3 s are left)\n"
    )


def test_cross_site_augmentation_only_for_radiograph_like_data() -> None:
    chest = rules.cross_site_rule(fp(), "resize")  # gray, 2 large objects, fixed layout
    assert {k: v.value for k, v in chest.items()} == rules.CROSS_SITE
    assert "radiograph-like" in chest["opacity"].reason
    not_radiographs = [
        rules.cross_site_rule(fp(), "crop"),  # crops of large images
        rules.cross_site_rule(fp(channels=3), "resize"),  # colour
        rules.cross_site_rule(fp(objects_per_image=30.0, object_area=SMALL_OBJECTS), "resize"),
        rules.cross_site_rule(fp(symmetry=_sym(KEPT, {"kept": True})), "resize"),  # free layout
    ]
    for planned in not_radiographs:
        assert all(v.value == 0.0 for v in planned.values()), planned
    settings, _ = rules.plan_settings(fp(), 600.0, None, n_val=10)
    assert settings["zoom_out"].value == 0.3 and settings["stamps"].value == 0.2


def test_crops_when_the_largest_images_pass_the_cap_though_the_median_does_not() -> None:
    """Mostly 256-px images with some of 1024 px and small objects: the large ones would
    be shrunk fourfold by resizing, so the plan crops (the rule looks at the largest
    image, not the median)."""
    sizes = {**_sizes(256, 256), "max_hw": [1024, 1024], "spread": 4.0}
    plan = rules.input_rule(fp(sizes=sizes, object_area=SMALL_OBJECTS))
    assert plan["input_mode"].value == "crop"


def test_four_objects_per_image_get_keep_largest_4() -> None:
    assert "keep_largest 4" in rules.postprocess_rule(fp(objects_per_image=4.0)).value


def test_valid_padding_plans_the_input_whose_output_is_the_images_size() -> None:
    """Whole 224-px images with valid padding: the input 396, whose output (212) is the
    largest at or below 224; the images are resized to the output and mirror-padded."""
    planned = rules.input_rule(fp(), padding="valid")
    assert planned["image_size"].value == 396
    reason = planned["image_size"].reason
    assert "valid-padding output" in reason and "mirror-padded" in reason
    assert planned["input_mode"].reason.startswith(
        "median image 224 px: trained whole resized to 212 px"
    )
    assert "trained whole at its own size" in rules.input_rule(fp())["input_mode"].reason


def test_valid_padding_plans_crops_whose_output_is_the_patch() -> None:
    """Crops with valid padding: the patch (256 px) is the crop's OUTPUT, its largest
    valid value at or below 256 (244), and the input is 184 px larger around it (428);
    a 256-px input would leave a 68-px output, 7% of the crop a target."""
    planned = rules.input_rule(
        fp(sizes=_sizes(512, 512), object_area=SMALL_OBJECTS), padding="valid"
    )["image_size"]
    assert planned.value == 428
    assert planned.reason.startswith("patch 428 px, output 244 px (valid padding)")
    same = rules.input_rule(fp(sizes=_sizes(512, 512), object_area=SMALL_OBJECTS))
    assert "valid padding" not in same["image_size"].reason
