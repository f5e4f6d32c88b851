"""plan.json, the merge defaults < plan < file < flags, `unet plan` and the planned `unet train`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from planning_data import blobs, write_set
from unet_lowered.cli import app
from unet_lowered.errors import UnetError
from unet_lowered.io.images import write_png
from unet_lowered.planning import plan as plan_mod
from unet_lowered.planning import rules


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_set(tmp_path / "data", 12, lambda k, rng: blobs(k, rng, size=32))


def test_sources_of_each_setting(tiny: Path, tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("loss: focal\nbase-filters: 8\n")
    cfg, prov = plan_mod.resolve_settings(tiny, settings, {"epochs": 1, "seed": None})
    assert (cfg.loss, cfg.base_filters, cfg.epochs) == ("focal", 8, 1)
    sources = prov["sources"]
    assert sources["loss"] == "file" and sources["base_filters"] == "file"
    assert sources["epochs"] == "flag"
    assert sources["flip_lr"] == "plan" and sources["input_mode"] == "plan"
    assert sources["dropout"] == "default"
    # blobs are rotation-free: planned flips and free rotations, unless a flag says no
    assert cfg.flip_lr and cfg.rotate == 180.0
    # --epochs given, no budget: the user chose the length, no step was timed
    assert cfg.time_budget is None and sources["time_budget"] == "default"
    assert prov["plan"]["step"] is None and "epochs" not in prov["plan"]["settings"]
    cfg, prov = plan_mod.resolve_settings(tiny, None, {"epochs": 1, "flip_lr": False})
    assert cfg.flip_lr is False and prov["sources"]["flip_lr"] == "flag"
    # no plan.json: `unet train` says it plans, for which budget (it said nothing)
    assert prov["note"] == (
        f"no plan in {tiny / plan_mod.PLAN_FILE}; planning for the epochs given (`unet plan` "
        "prints the choices and their reasons; the run records them)"
    )
    _, prov = plan_mod.resolve_settings(tiny, None, {"time_budget": "2m"})
    assert "; planning for a budget of 120 s (" in prov["note"]


def test_a_written_plan_is_used_until_the_data_or_budget_changes(tiny: Path) -> None:
    plan = plan_mod.make_plan(tiny, 600.0, measure=False)
    plan["settings"]["loss"]["value"] = "dice"  # as if the plan had chosen it
    plan_mod.write_plan(plan, tiny / plan_mod.PLAN_FILE)
    cfg, prov = plan_mod.resolve_settings(tiny, None, {"epochs": 1})
    assert cfg.loss == "dice" and prov["sources"]["loss"] == "plan"
    # --epochs without --time-budget: no budget applies, and the note no longer names one
    assert cfg.time_budget is None
    assert prov["note"] == (
        f"using the plan in {tiny / plan_mod.PLAN_FILE} (the epochs given; no time budget)"
    )
    cfg, prov = plan_mod.resolve_settings(tiny, None, {"epochs": 1, "time_budget": "5m"})
    assert cfg.loss != "dice" and cfg.time_budget == 300.0  # another budget: planned anew
    assert prov["note"].endswith("was made for a budget of 600 s, not 300 s; planned anew")
    # A plan made for a budget of its own: `unet train DATA` without one takes it whole.
    short = plan_mod.make_plan(tiny, 120.0, measure=False)
    short["settings"]["loss"]["value"] = "dice"
    plan_mod.write_plan(short, tiny / plan_mod.PLAN_FILE)
    cfg, prov = plan_mod.resolve_settings(tiny, None, {})
    assert cfg.loss == "dice" and cfg.time_budget == 120.0
    assert prov["sources"]["time_budget"] == "plan" and "(budget 120 s)" in prov["note"]
    write_png(tiny / "train" / "images" / "c000.png", blobs(0, np.random.default_rng(9), 32)[0])
    cfg, prov = plan_mod.resolve_settings(tiny, None, {})
    assert cfg.loss != "dice"  # the data changed: planned anew, for the budget chosen
    assert cfg.time_budget == 120.0  # not the default 600 s
    assert prov["note"].endswith(
        "was made for other data (images or masks changed, or copied: the check includes "
        "file times); planned anew for its budget of 120 s"
    )


def test_a_plan_holds_for_the_network_it_was_made_for(tiny: Path) -> None:
    """The plan's sizes depend on the network's padding and depth: a same-padding plan
    (32 px) does not hold for `unet train --padding valid` (input 204 whose output is
    20 px), which plans anew, and a valid plan is used only with --padding valid."""
    from unet_lowered.model import output_size

    path = tiny / plan_mod.PLAN_FILE
    plan = plan_mod.make_plan(tiny, 600.0, measure=False)
    assert plan["network"] == {"depth": 4, "padding": "same"}
    plan["settings"]["loss"]["value"] = "dice"  # as if the plan had chosen it
    plan_mod.write_plan(plan, path)
    cfg, prov = plan_mod.resolve_settings(tiny, None, {"epochs": 1, "padding": "valid"})
    assert cfg.loss != "dice" and (cfg.image_size, output_size(cfg.image_size, 4, "valid")) == (
        204,
        20,
    )
    assert prov["note"] == (
        f"{path} was made for depth 4 with same padding, not depth 4 with valid padding; "
        "planned anew for its budget of 600 s"
    )
    assert prov["plan"]["network"] == {"depth": 4, "padding": "valid"}
    valid = plan_mod.make_plan(tiny, 600.0, fixed={"padding": " Valid"}, measure=False)
    assert valid["network"] == {"depth": 4, "padding": "valid"}
    valid["settings"]["loss"]["value"] = "dice"
    plan_mod.write_plan(valid, path)
    cfg, prov = plan_mod.resolve_settings(tiny, None, {"epochs": 1, "padding": "VALID"})
    assert cfg.loss == "dice" and prov["note"].startswith(f"using the plan in {path}")
    # Not given, the padding is the plan's: `unet plan --padding valid`, then `unet train`.
    cfg, prov = plan_mod.resolve_settings(tiny, None, {"epochs": 1})
    assert (cfg.loss, cfg.padding, cfg.image_size) == ("dice", "valid", 204)
    assert prov["sources"]["padding"] == "plan" and prov["note"].startswith("using the plan")
    assert (
        "the network this plan was made for (--padding valid)"
        in (valid["settings"]["padding"]["reason"])
    )
    # Another depth given: planned anew, for it and the plan's padding.
    cfg, prov = plan_mod.resolve_settings(tiny, None, {"epochs": 1, "depth": 3})
    assert cfg.loss != "dice" and (cfg.depth, cfg.padding) == (3, "valid")
    assert "not depth 3 with valid padding; planned anew" in prov["note"]
    cfg, _ = plan_mod.resolve_settings(tiny, None, {"epochs": 1, "padding": "same"})
    assert cfg.loss != "dice" and cfg.image_size == 32
    del plan["network"]  # a plan from before the key: made for the defaults
    plan_mod.write_plan(plan, path)
    cfg, _ = plan_mod.resolve_settings(tiny, None, {"epochs": 1})
    assert cfg.loss == "dice"
    path.unlink()


def test_a_plan_file_given_is_used_as_it_is(tiny: Path, tmp_path: Path) -> None:
    """`unet train DATA --plan FILE`: the file's plan, made for other data and another
    budget too; a missing file or one made for another padding is refused, named."""
    elsewhere = write_set(tmp_path / "other", 12, lambda k, rng: blobs(k + 50, rng, size=32))
    plan = plan_mod.make_plan(elsewhere, 120.0, measure=False)
    plan["settings"]["loss"]["value"] = "dice"
    path = plan_mod.write_plan(plan, tmp_path / "mine.json")
    cfg, prov = plan_mod.resolve_settings(tiny, None, {}, plan_file=path)
    assert cfg.loss == "dice" and cfg.time_budget == 120.0
    assert prov["note"] == f"using the plan in {path} (budget 120 s)"
    cfg, _ = plan_mod.resolve_settings(tiny, None, {"time_budget": "5m"}, plan_file=path)
    assert cfg.loss == "dice"  # another budget given: the file still holds
    missing = tmp_path / "nope.json"
    with pytest.raises(UnetError) as refused:
        plan_mod.resolve_settings(tiny, None, {}, plan_file=missing)
    assert str(refused.value) == (
        f"{missing}: no such plan file; make one with `unet plan DATA --out {missing}`"
    )
    with pytest.raises(UnetError) as refused:
        plan_mod.resolve_settings(tiny, None, {"padding": "valid"}, plan_file=path)
    assert str(refused.value) == (
        f"{path} was made for depth 4 with same padding, not depth 4 with valid padding (its "
        f"sizes do not fit): make one with `unet plan {tiny} --depth 4 --padding valid --out "
        "FILE`, or leave out --plan"
    )


def test_unet_train_with_a_plan_file(tiny: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from unet_lowered.cli import main

    plan = plan_mod.make_plan(tiny, 600.0, measure=False)
    plan["settings"]["loss"]["value"] = "dice"
    path = plan_mod.write_plan(plan, tmp_path / "mine.json")
    run = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", str(tiny), "--out", str(run), "--plan", str(path), "--epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["loss"] == "dice" and config["settings_sources"]["loss"] == "plan"
    missing = tmp_path / "nope.json"
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:  # refused before the import, as the library does
        main(["train", str(tiny), "--out", str(tmp_path / "r2"), "--plan", str(missing)])
    assert done.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {missing}: no such plan file; make one with `unet plan DATA --out {missing}`"
    )
    with pytest.raises(SystemExit) as done:
        main(["train", "--out", str(run), "--resume", "--plan", str(path)])
    assert done.value.code == 1
    assert "drop --plan" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_a_bad_value_in_plan_json_names_the_file(tiny: Path) -> None:
    plan = plan_mod.make_plan(tiny, 600.0, measure=False)
    plan["settings"]["image_size"]["value"] = 17  # edited by hand
    plan_mod.write_plan(plan, tiny / plan_mod.PLAN_FILE)
    with pytest.raises(UnetError) as caught:
        plan_mod.resolve_settings(tiny, None, {"epochs": 1})
    message = str(caught.value)
    assert message.startswith(f"{tiny / plan_mod.PLAN_FILE}: ") and "17" in message
    assert message.endswith(f"make the plan again with `unet plan {tiny}`, or give --image-size)")
    cfg, _ = plan_mod.resolve_settings(tiny, None, {"epochs": 1, "image_size": 32})
    assert cfg.image_size == 32  # the flag wins over the plan's bad value
    (tiny / plan_mod.PLAN_FILE).unlink()


def test_plan_file_errors(tiny: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UnetError, match="--out FILE"):
        plan_mod.write_plan({"settings": {}}, tmp_path / "file" / "plan.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UnetError, match="not a readable plan"):
        plan_mod.read_plan(tmp_path / "bad.json")
    (tmp_path / "new.json").write_text(json.dumps({"version": 99, "settings": {}}))
    with pytest.raises(UnetError, match="newer than this unet-lowered"):
        plan_mod.read_plan(tmp_path / "new.json")


def _edited(plan: dict, edit: str, value) -> dict:
    """``plan`` with ``edit`` (``"settings.epochs.value"``, ``"time_budget_s"``) set."""
    plan = json.loads(json.dumps(plan))
    *keys, last = edit.split(".")
    node = plan
    for key in keys:
        node = node[key]
    node[last] = value
    return plan


@pytest.mark.parametrize(
    ("edit", "value", "match"),
    [
        # TypeError: string indices must be integers (planned_values)
        ("settings.batch_size", "four", "settings.batch_size is not a {value, reason} entry"),
        ("settings.epochs", {"value": 8}, "settings.epochs is not a {value, reason} entry"),
        ("advice.tta", 3, "advice.tta is not a {value, reason} entry"),
        ("settings", [1], "not a plan (no settings)"),  # refused before too
        # a misleading 'out of memory ... lower --batch-size'
        ("settings.epochs.value", 10**9, "epochs must be at most 100000, got 1000000000"),
        ("settings.epochs.value", "many", "the planned epochs: epochs must be a whole number"),
        # a 26.8 GiB allocation
        (
            "settings.image_size.value",
            60000,
            "the planned image_size: image-size must be at most 8192",
        ),
        ("settings.batch_size.value", 0, "the planned batch_size"),
        ("settings.loss.value", "nonsense", "the planned loss"),
        ("time_budget_s", "nan", "time_budget_s must be a positive number of seconds, got 'nan'"),
        ("time_budget_s", float("nan"), "time_budget_s must be a positive number"),
        ("time_budget_s", -5, "time_budget_s must be a positive number"),
        ("settings.time_budget.value", "nan", "the planned time_budget"),
        ("fingerprint.touching_fraction", "x", "fingerprint.touching_fraction must be a share"),
    ],
)
def test_a_damaged_plan_json_is_refused_in_one_line(
    tiny: Path, tmp_path: Path, edit: str, value, match: str
) -> None:
    plan = plan_mod.make_plan(tiny, 600.0, measure=False)
    plan["settings"]["epochs"] = {"value": 12, "reason": "as if the step was timed"}
    plan["settings"]["time_budget"] = {"value": 600.0, "reason": "the budget"}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert plan_mod.read_plan(path) == plan  # as written, it reads
    path.write_text(json.dumps(_edited(plan, edit, value)))
    with pytest.raises(UnetError) as caught:
        plan_mod.read_plan(path)
    message = str(caught.value)
    assert type(caught.value) is UnetError
    assert message.startswith(f"{path}: ") and match in message, message
    assert message.endswith("; run `unet plan DATA` again") and "\n" not in message
    # `unet train DATA` with such a DATA/plan.json (its signature still matching): refused
    path.replace(tiny / plan_mod.PLAN_FILE)
    with pytest.raises(UnetError, match="run `unet plan DATA` again"):
        plan_mod.resolve_settings(tiny, None, {})


def test_a_progressive_plan_times_its_half_size_step_too(tmp_path: Path) -> None:
    # 128-px whole images: progressive resizing is planned, and a 30 s budget (not the
    # cap) sets the epochs, so the 64-px step is measured and recorded beside the step.
    data = write_set(tmp_path / "data", 12, lambda k, rng: blobs(k, rng, size=128))
    plan = plan_mod.make_plan(data, 30.0)
    assert plan["settings"]["progressive"]["value"] == 0.5
    half = plan["step"]["half_size"]
    assert half["image_size"] == 64 and half["step_s"] > 0
    assert half["batch_size"] == plan["settings"]["batch_size"]["value"]
    assert "their steps measured" in plan["settings"]["epochs"]["reason"]


def test_unet_plan_writes_and_prints(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "p.json"
    result = CliRunner().invoke(app, ["plan", str(tiny), "--time-budget", "30s", "--out", str(out)])
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    assert plan["time_budget_s"] == 30.0 and plan["step"]["step_s"] > 0
    assert plan["settings"]["epochs"]["value"] >= 1
    assert all(entry["reason"] for entry in plan["settings"].values())
    assert not (tiny / plan_mod.PLAN_FILE).exists()
    assert "wrote" in result.output and "input-mode" in result.output
    # `unet train DATA` reads only DATA/plan.json: the message gives the --plan to use.
    assert f"`unet train {tiny} --plan {out}` uses it" in " ".join(result.output.split())
    assert plan["fingerprint"]["polarity"] == {
        "dark_objects": 0,
        "light_objects": 10,  # the training split: 10 of the 12 pairs
        "median_agrees": 10,
    }
    assert "objects darker than background" in result.output
    assert "invert-light" in result.output
    bad = CliRunner().invoke(app, ["plan", str(tiny), "--time-budget", "soon"])
    assert bad.exit_code == 1


def test_unet_plan_plans_for_the_padding_and_depth_given(
    tiny: Path, tmp_path: Path, monkeypatch
) -> None:
    from unet_lowered.planning import steptime

    fake = {"step_s": 0.01, "augment_s": 0.0, "batch_size": 4}
    monkeypatch.setattr(steptime, "measure_step_time", lambda *a, **k: fake)
    out = tmp_path / "p.json"
    args = ["plan", str(tiny), "--out", str(out), "--padding", "valid", "--depth", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    assert plan["network"] == {"depth": 3, "padding": "valid"}
    from unet_lowered.model import output_size

    size = plan["settings"]["image_size"]["value"]  # the output is the images' 32 px or less
    assert output_size(size, 3, "valid") == 28 and size == 116
    assert "depth 3 with valid padding" in " ".join(result.output.split())
    bad = CliRunner().invoke(app, ["plan", str(tiny), "--padding", "full"])
    assert bad.exit_code == 1 and not out.with_name("plan.json").exists()
    assert str(bad.exception) == "unknown --padding 'full'; use one of: same, valid"


def test_unet_plan_writes_into_prepared_folders_only(tiny: Path) -> None:
    # A folder `unet prepare` did not write is source data: nothing is written into it.
    before = sorted(p.relative_to(tiny) for p in tiny.rglob("*"))
    refused = CliRunner().invoke(app, ["plan", str(tiny), "--time-budget", "30s"])
    assert refused.exit_code == 1
    assert "not a folder `unet prepare` wrote (no dataset.json)" in " ".join(
        str(refused.exception).split()
    )
    assert sorted(p.relative_to(tiny) for p in tiny.rglob("*")) == before
    from unet_lowered.dataset.prepare import prepare

    prepared = prepare(tiny, tiny.parent / "prepared").dest
    done = CliRunner().invoke(app, ["plan", str(prepared), "--time-budget", "30s"])
    assert done.exit_code == 0, done.output
    assert (prepared / plan_mod.PLAN_FILE).is_file()
    assert "uses it" in " ".join(done.output.split())


def test_unet_train_without_options_uses_the_plan(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    from unet_lowered.planning import steptime

    # A short budget and a fast step: the plan asks for the cap of 2 epochs, the budget
    # callback stops after the first (its epoch, with graph tracing, takes seconds).
    monkeypatch.setattr(rules, "MAX_EPOCHS", 2)
    monkeypatch.setattr(plan_mod, "DEFAULT_BUDGET_S", 2.0)
    fake = {"step_s": 0.001, "augment_s": 0.0, "batch_size": 2}
    monkeypatch.setattr(steptime, "measure_step_time", lambda *a, **k: fake)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(tiny), "--out", str(run)])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    planned = config["plan"]["settings"]
    assert config["epochs"] == planned["epochs"]["value"] == 2
    assert config["plan"]["step"] == fake
    sources = config["settings_sources"]
    assert sources["epochs"] == sources["loss"] == sources["time_budget"] == "plan"
    assert sources["base_filters"] == "default"
    assert config["flip_lr"] is planned["flip_lr"]["value"] is True
    assert config["time_budget"] == 2.0 and metrics["time_budget_s"] == 2.0
    assert metrics["epochs_completed"] == 1  # stopped by the budget; the first always runs
    assert metrics["time_used_s"] > 0
    assert not (tiny / plan_mod.PLAN_FILE).exists()  # the data folder is left as it was


def test_the_budget_counts_from_the_commands_start(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    """`unet train --time-budget` counts the Keras import and planning too: the clock
    handed to training is the one main() started, not the later one of the planning."""
    import time

    from unet_lowered import cli
    from unet_lowered.training import train as train_mod

    seen = {}

    def fake_train(data, out, cfg, **kwargs):
        seen["started"] = kwargs["provenance"]["started"]
        return {"val_dice": None, "train_time_s": 0.0}

    monkeypatch.setattr(train_mod, "train", fake_train)
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)  # keep pytest's Ctrl-C
    monkeypatch.setattr(cli, "_import_keras_quietly", lambda: time.sleep(0.2))  # the import
    args = ["train", str(tiny), "--out", str(tmp_path / "run"), "--epochs", "1"]
    with pytest.raises(SystemExit) as ended:
        cli.main(args)
    assert ended.value.code == 0
    assert seen["started"] == cli._STARTED[0]
    assert time.perf_counter() - seen["started"] >= 0.2  # the import's 0.2 s are counted


def test_unet_plan_prints_no_tensorflow_start_up_notices(tiny: Path, tmp_path: Path) -> None:
    """TensorFlow's absl and oneDNN lines (printed when it loads, for the step timing)
    stay off `unet plan`'s stderr, as for every command that loads Keras."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "unet_lowered",
            "plan",
            str(tiny),
            "--time-budget",
            "10s",
            "--out",
            str(tmp_path / "p.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    assert "absl" not in done.stderr and "oneDNN" not in done.stderr, done.stderr
    # the fingerprint and plan tables are the result: on stdout (they went to stderr)
    assert "fingerprint" in done.stdout.lower() and "fingerprint" not in done.stderr.lower()


def test_train_help_says_which_settings_the_plan_chooses(tiny: Path) -> None:
    """`unet train --help` showed plain defaults (epochs 45, zoom-out 0, ...) for settings
    every `unet train` takes from the plan. Each planned setting's help now says so, and
    the cross-site probabilities it names are the rule's."""
    import typer

    from unet_lowered.cli import app
    from unet_lowered.planning.rules import CROSS_SITE

    train = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    helps = {p.name: p.help or "" for p in train.params}
    helps["input_mode"] = helps["crop"]
    planned = plan_mod.make_plan(tiny, 600.0, measure=False)["settings"]
    assert set(CROSS_SITE) <= set(planned)
    for name in planned:
        assert "plan" in helps[name], (name, helps[name])
        assert not re.search(r"\[default: [^p]", helps[name]), (name, helps[name])
    for name, p in CROSS_SITE.items():
        assert f"[default: planned: {p:g} for radiograph-like data, else 0]" in helps[name]


def test_the_data_signature_takes_a_file_name_that_is_not_utf8(tiny: Path) -> None:
    """A Latin-1 name (caf\\xe9.png) made `unet plan` and `unet train` fail in the
    signature's encode with a traceback."""
    import os

    from unet_lowered.dataset.pairs import load_prepared

    before = plan_mod.signature(load_prepared(tiny))
    for sub in ("images", "masks"):
        source = tiny / "train" / sub / "c000.png"
        try:
            os.rename(source, os.fsencode(source.parent) + b"/caf\xe9.png")
        except OSError:
            pytest.skip("this file system refuses names that are not UTF-8")
    after = plan_mod.signature(load_prepared(tiny))
    assert len(after) == 16 and after != before
