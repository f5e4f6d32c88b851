"""``unet predict``'s output names: no two inputs share a file, and nothing it did not
write is overwritten (a folder of ground-truth masks, a run folder)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from run_fixtures import bright_model, disk_image, make_run
from unet_lowered.errors import UnetError
from unet_lowered.inference import batch
from unet_lowered.inference.batch import make_ids, predict_files
from unet_lowered.inference.journal import JOURNAL_FILE
from unet_lowered.io import images


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run", bright_model(32))


def write_inputs(folder: Path, *stems: str) -> None:
    for k, stem in enumerate(stems):
        images.write_png(folder / f"{stem}.png", disk_image(40 + k, 30, seed=k)[0])


def cli(*args: str | Path) -> int:
    from unet_lowered.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------- ids


def test_make_ids_same_stem_in_one_folder_keeps_the_suffix() -> None:
    pin = Path("/tmp/audit-hostile/pin")
    assert make_ids([pin / "dup.png", pin / "dup.jpg"]) == ["dup_png", "dup_jpg"]
    assert make_ids([Path("rel/dup.PNG"), Path("rel/dup.tif"), Path("rel/other.png")]) == [
        "dup_png",
        "dup_tif",
        "other",
    ]
    # the stem in one folder twice and in another folder once: folders and suffixes
    files = [Path("/r/a/x.png"), Path("/r/a/x.jpg"), Path("/r/b/x.png")]
    assert make_ids(files) == ["a__x_png", "a__x_jpg", "b__x"]


def test_predict_same_stem_two_suffixes(run: Path, tmp_path: Path) -> None:
    image = disk_image(40, 30)[0]
    images.write_png(tmp_path / "pin" / "dup.png", image)
    assert cv2_write(tmp_path / "pin" / "dup.jpg", image)
    report = predict_files(run, [tmp_path / "pin"], tmp_path / "out", progress=False)
    assert sorted(report.written) == ["dup_jpg", "dup_png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "dup_jpg.png",
        "dup_png.png",
        "predictions.csv",
    ]


def cv2_write(path: Path, image) -> bool:
    import cv2

    return bool(cv2.imwrite(str(path), image))


# ---------------------------------------------------------------- two inputs, one file


def test_outputs_that_clash_are_refused_before_predicting(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_inputs(tmp_path / "in", "a", "a_prob", "a_overlay")
    before = files_in(tmp_path / "in")
    out = tmp_path / "out"
    code = cli("predict", run, tmp_path / "in", "-o", out, "--save-prob", "png", "--overlay")
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {tmp_path / 'in' / 'a.png'} and {tmp_path / 'in' / 'a_overlay.png'} would both "
        f"write {out / 'a_overlay.png'} (the overlay of the first, the mask of the second); "
        "rename one of them, predict them into separate --out folders, or drop --overlay"
    )
    assert not out.exists()  # refused before any file was written
    assert files_in(tmp_path / "in") == before


def test_clash_with_the_probabilities_names_save_prob(run: Path, tmp_path: Path) -> None:
    write_inputs(tmp_path / "in", "a", "a_prob")
    with pytest.raises(UnetError) as caught:
        predict_files(run, [tmp_path / "in"], tmp_path / "out", save_prob="png", progress=False)
    message = str(caught.value)
    assert "in/a.png and " in message and "in/a_prob.png would both write " in message
    assert "out/a_prob.png (the probabilities of the first, the mask of the second)" in message
    assert message.endswith("or drop --save-prob") and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_same_inputs_without_a_clash_are_predicted(run: Path, tmp_path: Path) -> None:
    """Only the options that make the names clash are refused."""
    write_inputs(tmp_path / "in", "a", "a_prob", "a_overlay")
    report = predict_files(run, [tmp_path / "in"], tmp_path / "o1", progress=False)
    assert sorted(report.written) == ["a", "a_overlay", "a_prob"]
    report = predict_files(run, [tmp_path / "in"], tmp_path / "o2", save_prob="npy")
    assert len(report.written) == 3 and (tmp_path / "o2" / "a_prob.npy").is_file()


# ---------------------------------------------------------------- files already there


def test_foreign_file_of_the_same_name_is_refused(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_inputs(tmp_path / "hc" / "images", "001", "002")
    masks = tmp_path / "hc" / "masks"
    masks.mkdir()
    (masks / "002.png").write_bytes(b"ground truth, not a prediction")
    (masks / "notes.txt").write_text("kept")
    before = files_in(masks)
    code = cli("predict", run, tmp_path / "hc" / "images", "-o", masks, "--no-progress")
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {masks / '002.png'}: already exists and was not written by `unet predict`; "
        "predictions never overwrite other files: choose an empty or new --out folder"
    )
    assert files_in(masks) == before  # byte for byte, and nothing added


def test_foreign_predictions_csv_is_refused(run: Path, tmp_path: Path) -> None:
    write_inputs(tmp_path / "in", "a")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "predictions.csv").write_text("case,score\n1,0.5\n")
    with pytest.raises(UnetError, match=r"predictions\.csv: already exists and was not written"):
        predict_files(run, [tmp_path / "in"], tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "predictions.csv").read_text() == "case,score\n1,0.5\n"


def test_run_folder_is_refused(run: Path, tmp_path: Path) -> None:
    write_inputs(tmp_path / "in", "a")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = files_in(copy)
    with pytest.raises(UnetError, match=r"--out .*run is a run folder of `unet train`"):
        predict_files(copy, [tmp_path / "in"], copy, progress=False)
    assert files_in(copy) == before


def test_new_empty_and_unrelated_folders_are_fine(run: Path, tmp_path: Path) -> None:
    write_inputs(tmp_path / "in", "a")
    (tmp_path / "empty").mkdir()
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "b.png").write_bytes(b"someone else's")
    for out in ["new/deeper", "empty", "mixed"]:
        report = predict_files(run, [tmp_path / "in"], tmp_path / out, progress=False)
        assert report.written == ["a"] and (tmp_path / out / "a.png").is_file()
    assert (tmp_path / "mixed" / "b.png").read_bytes() == b"someone else's"


def test_predicting_twice_into_the_same_folder_starts_over(run: Path, tmp_path: Path) -> None:
    write_inputs(tmp_path / "in", "a", "b")
    out = tmp_path / "out"
    options = {"save_prob": "png", "save_overlay": True, "progress": False}
    predict_files(run, [tmp_path / "in"], out, **options)
    first = files_in(out)
    report = predict_files(run, [tmp_path / "in"], out, **options)
    assert sorted(report.written) == ["a", "b"]
    second = files_in(out)
    assert second.keys() == first.keys()
    assert {k: v for k, v in second.items() if k != "predictions.csv"} == {
        k: v for k, v in first.items() if k != "predictions.csv"
    }


@pytest.mark.parametrize("csv_left", [True, False])
def test_resume_after_an_interruption(run, tmp_path, monkeypatch, csv_left) -> None:
    """An interrupted run leaves its journal (and, unless killed hard, predictions.csv):
    --resume finishes it in the same folder."""
    write_inputs(tmp_path / "in", "a", "b", "c")
    out = tmp_path / "out"
    real = batch._write_outputs
    calls = {"n": 0}

    def dies_after_one(*args, **kwargs):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "_write_outputs", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        predict_files(run, [tmp_path / "in"], out, progress=False, pipeline=False)
    monkeypatch.setattr(batch, "_write_outputs", real)
    assert (out / JOURNAL_FILE).is_file() and (out / "a.png").is_file()
    if not csv_left:  # as after kill -9: only the journal says the folder is predict's
        (out / "predictions.csv").unlink()
    report = predict_files(run, [tmp_path / "in"], out, resume=True, progress=False)
    assert report.written == ["a", "b", "c"]
    with open(out / "predictions.csv", newline="") as f:
        assert [r["id"] for r in csv.DictReader(f)] == ["a", "b", "c"]
    assert not (out / JOURNAL_FILE).exists()
