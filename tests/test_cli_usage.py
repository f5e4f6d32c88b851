"""The ``unet`` command line itself: mistakes refused before the Keras import, usage
errors that name the command's own help, and help texts that read as written.

The cases that must not import Keras run in a fresh interpreter, one for all cases,
which reports after each whether ``keras`` (or TensorFlow) was imported.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from unet_lowered.errors import UnetError

RUNNER = r"""
import contextlib, io, json, sys
from unet_lowered.cli import main
results = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as e:
            code = e.code
    heavy = "keras" in sys.modules or "tensorflow" in sys.modules
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue(), "heavy": heavy})
print(json.dumps(results))
"""


def run_fresh(cwd: Path, cases: list[list[str]]) -> list[dict]:
    """Each case through ``cli.main`` in one new interpreter: exit status, stdout, stderr
    and whether Keras or TensorFlow had been imported by then."""
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(cases)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**__import__("os").environ, "COLUMNS": "80"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


RUN_MISSING = "error: nosuch: no such run folder; pass the --out folder of `unet train`\n"
DATA_MISSING = "error: nosuch: no such data folder; run `unet prepare SRC nosuch` first\n"

# Each case: arguments, the one stderr line. Run in a folder holding an empty folder
# `empty` (stands for a run or data folder that exists) and nothing named `nosuch*`.
BEFORE_KERAS = [
    (["train", "nosuch"], DATA_MISSING),
    (  # a bad setting still comes before the missing DATA, as after the import
        ["train", "--loss", "bogus"],
        "error: unknown --loss 'bogus'; use one of: bce+dice, bce, dice, focal, weighted-bce "
        "(aliases: ce=bce, ce+dice=bce+dice, weighted-ce=weighted-bce)\n",
    ),
    (["train", "nosuch", "--out", "r", "--epochs", "2"], DATA_MISSING),
    (
        ["train", "nosuch", "--loss", "bogus"],
        "error: unknown --loss 'bogus'; use one of: bce+dice, bce, dice, focal, weighted-bce "
        "(aliases: ce=bce, ce+dice=bce+dice, weighted-ce=weighted-bce)\n",
    ),
    (
        ["train", "empty", "--optimizer", "rmsprop"],
        "error: unknown --optimizer 'rmsprop'; use one of: adam, sgd\n",
    ),
    (
        ["train", "empty", "--schedule", "step"],
        "error: unknown --schedule 'step'; use one of: cosine, onecycle, plateau, none\n",
    ),
    (
        ["train", "empty", "--precision", "fp16"],
        "error: unknown --precision 'fp16'; use one of: auto, float32, mixed_bfloat16\n",
    ),
    (
        ["train", "empty", "--padding", "full"],
        "error: unknown --padding 'full'; use one of: same, valid\n",
    ),
    (
        ["train", "empty", "--distribute", "ddp"],
        "error: unknown --distribute 'ddp'; use one of: none, data-parallel\n",
    ),
    (
        ["train", "empty", "--time-budget", "soon"],
        "error: time-budget must be a positive duration like 90s, 10m or 1h, got 'soon'\n",
    ),
    (["train", "empty", "--config", "nosuch.yaml"], "error: nosuch.yaml: no such config file\n"),
    (["plan", "nosuch"], DATA_MISSING),
    (["plan", "nosuch", "--out", "plan.json"], DATA_MISSING),
    (
        ["plan", "empty"],
        "error: empty: not a folder `unet prepare` wrote (no dataset.json); `unet plan` writes "
        "nothing into source data: pass --out FILE, or `unet prepare` it first\n",
    ),
    (
        ["plan", "empty", "--time-budget", "soon"],
        "error: time-budget must be a positive duration like 90s, 10m or 1h, got 'soon'\n",
    ),
    (["plot", "nosuch"], RUN_MISSING),
    (["evaluate", "nosuch", "empty"], RUN_MISSING),
    (["evaluate", "empty", "nosuch"], DATA_MISSING),
    (
        ["evaluate", "empty", "empty", "--split", "test"],
        "error: unknown --split 'test'; use one of: all, val, train\n",
    ),
    (
        ["predict", "nosuch", "nosuch.png", "--out", "o"],
        "error: nosuch.png: no such file or folder; check the path\n",
    ),
    (["predict", "nosuch", "empty", "--out", "o"], RUN_MISSING),
    (
        ["predict", "empty", "empty", "-o", "o", "--mode", "fast"],
        "error: unknown --mode 'fast'; use one of: auto, resize, tile\n",
    ),
    (
        ["predict", "empty", "empty", "-o", "o", "--tta-transforms", "all"],
        "error: unknown --tta-transforms 'all'; use one of: auto, lr, ud, flips, dihedral\n",
    ),
    (
        ["predict", "empty", "empty", "-o", "o", "--polarity", "flip"],
        "error: unknown --polarity 'flip'; use one of: auto, keep, invert\n",
    ),
    (
        ["predict", "empty", "empty", "-o", "o", "--orientation", "turn"],
        "error: unknown --orientation 'turn'; use one of: auto, keep\n",
    ),
    (
        ["predict", "empty", "empty", "-o", "o", "--save-prob", "jpg"],
        "error: unknown --save-prob 'jpg'; use one of: png, npy\n",
    ),
    (
        ["predict", "empty", "empty", "-o", "o", "--engine", "spark"],
        "error: unknown --engine 'spark'; use one of: local, ray\n",
    ),
    (
        ["export", "nosuch"],
        "error: nosuch: not a .keras file or run folder; pass RUN or RUN/model.keras\n",
    ),
    (["export", "nosuch.keras"], "error: nosuch.keras: no such model file\n"),
    (
        ["export", "empty", "--format", "tflite"],
        "error: unknown --format 'tflite'; use one of: onnx, saved_model\n",
    ),
    (
        ["model-info", "--padding", "full"],
        "error: unknown --padding 'full'; use one of: same, valid\n",
    ),
    (["serve", "nosuch"], RUN_MISSING),
    (
        ["serve", "empty", "--mode", "fast"],
        "error: unknown --mode 'fast'; use one of: auto, resize, tile\n",
    ),
]


def test_mistakes_that_need_no_model_are_refused_before_keras_is_imported(
    tmp_path: Path,
) -> None:
    """A missing DATA, RUN or INPUT path, or an unknown value of a choice option, took
    the 4-17 s of the Keras/TensorFlow import before its one line."""
    (tmp_path / "empty").mkdir()
    results = run_fresh(tmp_path, [args for args, _ in BEFORE_KERAS])
    for (args, line), got in zip(BEFORE_KERAS, results, strict=True):
        assert (got["code"], got["err"], got["heavy"]) == (1, line, False), args

    # The lines given before the import are the library's own (no drift).
    from unet_lowered.dataset.pairs import load_prepared
    from unet_lowered.inference.batch import collect_inputs
    from unet_lowered.inference.export import export_model
    from unet_lowered.io.runs import load_run

    cases = [
        (
            lambda: collect_inputs(["nosuch.png"]),
            "nosuch.png: no such file or folder; check the path",
        ),
        (
            lambda: export_model(tmp_path / "nosuch", "saved_model"),
            f"{tmp_path / 'nosuch'}: not a .keras file or run folder; pass RUN or RUN/model.keras",
        ),
        (
            lambda: export_model(tmp_path / "nosuch.keras", "saved_model"),
            f"{tmp_path / 'nosuch.keras'}: no such model file",
        ),
        (lambda: load_run(Path("nosuch")), RUN_MISSING[len("error: ") : -1]),
        (lambda: load_prepared(Path("nosuch")), DATA_MISSING[len("error: ") : -1]),
    ]
    for call, message in cases:
        with pytest.raises(UnetError) as caught:
            call()
        assert str(caught.value) == message


USAGE = [
    (["train", "--out"], "error: Option '--out' requires an argument. (see `unet train --help`)\n"),
    (
        ["predict", "r", "in", "-o"],
        "error: Option '-o' requires an argument. (see `unet predict --help`)\n",
    ),
    (
        ["train", "data", "--flip-lr", "yes"],
        "error: 'yes' after --flip-lr: --flip-lr is an on/off flag and takes no value; write "
        "--flip-lr or --no-flip-lr (see `unet train --help`)\n",
    ),
    (  # the value read as DATA
        ["train", "--flip-lr", "yes", "--out", "r"],
        "error: 'yes' after --flip-lr: --flip-lr is an on/off flag and takes no value; write "
        "--flip-lr or --no-flip-lr (see `unet train --help`)\n",
    ),
    (
        ["predict", "r", "in", "-o", "o", "--overlay", "true"],
        "error: 'true' after --overlay: --overlay is an on/off flag and takes no value; write "
        "--overlay or leave it out (see `unet predict --help`)\n",
    ),
    (
        ["check", "data", "--strict", "please"],
        "error: Got unexpected extra argument(s) (please): --strict is an on/off flag and "
        "takes no value; write --strict or leave it out (see `unet check --help`)\n",
    ),
    (
        ["train"],
        "error: Missing argument 'data': the folder `unet prepare` wrote (or --resume, to "
        "continue the run in --out) (see `unet train --help`)\n",
    ),
    (
        ["train", "--out", "r"],
        "error: Missing argument 'data': the folder `unet prepare` wrote (or --resume, to "
        "continue the run in --out) (see `unet train --help`)\n",
    ),
]


def test_usage_errors_name_the_commands_help_and_say_what_to_write(tmp_path: Path) -> None:
    """`--out` without a value pointed to `unet --help`; `--flip-lr yes` said only 'unexpected
    extra argument'; `unet train` without DATA or --resume was exit status 1."""
    results = run_fresh(tmp_path, [args for args, _ in USAGE])
    for (args, line), got in zip(USAGE, results, strict=True):
        assert (got["code"], got["err"], got["heavy"]) == (2, line, False), args


def test_dash_h_is_help_everywhere(tmp_path: Path) -> None:
    cases = [["-h"], ["train", "-h"], ["predict", "-h"], ["synth", "-h"], ["plan", "data", "-h"]]
    results = run_fresh(tmp_path, cases)
    for args, got in zip(cases, results, strict=True):
        name = " ".join(a for a in args if a not in ("-h", "data"))
        assert got["code"] == 0 and not got["err"] and not got["heavy"], (args, got)
        assert got["out"].startswith(f"Usage: unet {name}".rstrip() + " ["), (args, got["out"])


ORDER = [
    "check",
    "prepare",
    "plan",
    "train",
    "evaluate",
    "predict",
    "plot",
    "export",
    "model-info",
    "synth",
    "serve",
    "demo",
]


def help_text(capsys, monkeypatch, *args: str) -> str:
    from unet_lowered.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as done:
        main([*args, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_the_command_list_is_in_pipeline_order_and_not_cut(capsys, monkeypatch) -> None:
    """`unet --help` listed the commands in the order of the source file, each summary
    cut with '...' at 80 columns."""
    text = help_text(capsys, monkeypatch)
    listed = text.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed] == ORDER  # one line each: none wraps
    assert all(re.match(r"^  \S+ +\S", line) for line in listed), listed
    assert not any(line.rstrip().endswith("...") for line in listed), listed
    assert all(len(line) <= 78 for line in listed)  # fits 80 columns
    # the README's tour lists them in the same order
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    tour = readme.split("## A tour of the CLI", 1)[1].split("```", 2)[1]
    assert [line.split()[1] for line in tour.splitlines() if line.startswith("unet ")] == ORDER


EXAMPLES = {
    "prepare": ["unet prepare data/raw data/prepared"],
    "check": ["unet check data/raw --strict"],
    "model-info": ["unet model-info --width 0.25 --width 0.5 --width 1 --size 256"],
    "predict": ["unet predict runs/lungs scans/ --out masks/ --overlay"],
    "evaluate": ["unet evaluate runs/lungs data/jsrt --split val"],
    "serve": [
        "unet serve runs/lungs                   # then open http://127.0.0.1:8000",
        "unet serve runs/lungs --keep-largest 2  # overrides the run's choice",
    ],
}


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_examples_are_whole_lines_of_the_help(command, capsys, monkeypatch) -> None:
    """Click rewrapped the examples with the prose around them, cutting a command in two
    (`unet model-info --width 0.25 --width 0.5 --width 1 --size` / `256`)."""
    text = help_text(capsys, monkeypatch, command)
    lines = [line.strip() for line in text.splitlines()]
    for example in EXAMPLES[command]:
        assert example in lines, text
    assert all(len(line) < 80 for line in text.splitlines()), text


def test_help_describes_batch_norm_and_where_train_reads_a_plan(capsys, monkeypatch) -> None:
    train = " ".join(help_text(capsys, monkeypatch, "train").split())
    assert (
        "--batch-norm / --no-batch-norm Batch normalisation after every 3x3 convolution "
        "(not in the paper) [default: off]." in train
    )
    plan = " ".join(help_text(capsys, monkeypatch, "plan").split())
    assert (
        "-o, --out <path> Plan file [default: DATA/plan.json]; `unet train DATA` reads "
        "DATA/plan.json, `unet train DATA --plan FILE` this one." in plan
    )
    assert "--plan <path> A plan to use instead of DATA/plan.json" in train


def test_out_of_memory_advice_names_only_flags_the_command_has() -> None:
    """evaluate's advice named --max-pixels, which evaluate does not have."""
    import typer

    from unet_lowered import cli

    assert cli._out_of_memory("evaluate", MemoryError("no room")) == (
        "out of memory (no room); lower --batch-size"
    )
    group = typer.main.get_command(cli.app)
    for command in ("train", "predict", "evaluate", "serve"):
        advice = cli._out_of_memory(command, MemoryError("x"))
        sub = group.get_command(group.context_class(group), command)
        flags = {o for p in sub.params for o in (*p.opts, *p.secondary_opts)}
        named = set(re.findall(r"--[a-z][a-z-]*", advice))
        assert named and named <= flags, (command, named - flags)
