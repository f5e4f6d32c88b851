"""The progress bar's second line for the parts (tiles) of one long step."""

from __future__ import annotations

import io

from rich.console import Console

from unet_lowered.io import progress


def test_a_long_step_gets_a_line_of_its_parts_until_they_are_done() -> None:
    console = Console(file=io.StringIO(), force_terminal=True)
    with progress.progress_bar(2, True, "predicting", console) as advance:
        bar = advance._bar
        small = advance.part("tiles of small.png")
        for done in range(1, progress.PART_MIN):
            small(done, progress.PART_MIN - 1)
        assert [t.description for t in bar.tasks] == ["predicting"]  # too few to show
        advance()
        huge = advance.part("tiles of huge.png")
        huge(4, 200)
        lines = {t.description: (t.completed, t.total) for t in bar.tasks}
        assert lines == {"predicting": (1, 2), "tiles of huge.png": (4, 200)}
        huge(200, 200)
        assert [t.description for t in bar.tasks] == ["predicting"]  # gone when done
        advance()
        assert bar.tasks[0].completed == 2


def test_names_with_brackets_are_shown_as_they_are() -> None:
    """The labels are plain text: rich markup in a file name is neither read nor fails."""
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    with progress.progress_bar(1, True, "predicting", console) as advance:
        advance.part("tiles of [/red]x[b].png")(1, 100)
        advance._bar.refresh()
    assert "tiles of [/red]x[b].png" in console.file.getvalue()


def test_in_a_log_plain_lines_say_how_far_the_work_is(monkeypatch) -> None:
    """Not a terminal (nohup, cron, CI): a rich bar printed nothing until the end, then
    one line with the time remaining (0:00:00). Plain lines come at the start, every
    LOG_EVERY_S seconds and at the end, with the time so far; no escapes, no returns."""
    clock = iter([0.0, 5.0, 31.0, 40.0, 75.0, 80.0, 81.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    console = Console(file=io.StringIO(), force_terminal=False, width=80)
    with progress.progress_bar(4, True, "predicting", console) as advance:  # starts at 0
        advance()  # 5 s: too soon
        advance()  # 31 s: a line
        tiles = advance.part("tiles of huge.png")
        tiles(10, 100)  # 40 s: too soon after the last line
        tiles(60, 100)  # 75 s: a line
        advance()  # 80 s: too soon
        advance()  # 81 s: the end
    assert console.file.getvalue().splitlines() == [
        "predicting: 0/4",
        "predicting: 2/4, 31 s",
        "tiles of huge.png: 60/100, 75 s",
        "predicting: 4/4, 81 s",
    ]
    with progress.progress_bar(3, False, "predicting", console) as advance:
        advance()
    assert console.file.getvalue().count("\n") == 4  # disabled: nothing
