"""A data set's plan (``DATA/plan.json``) and the settings of a planned ``unet train``.

:func:`make_plan` fingerprints the training split, measures a training step and
runs the rules; :func:`write_plan` writes ``plan.json`` atomically;
:func:`resolve_settings` is what ``unet train`` does: defaults < plan < ``--config``
file < flags, with the source of every value recorded (``default``, ``plan``,
``file``, ``flag``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unet_lowered import options
from unet_lowered.dataset.pairs import PreparedData, check_split, load_prepared
from unet_lowered.errors import SettingError, UnetError
from unet_lowered.io.progress import status
from unet_lowered.planning import rules
from unet_lowered.planning.budget import parse_duration
from unet_lowered.planning.fingerprint import fingerprint
from unet_lowered.training import config as config_mod
from unet_lowered.training.config import TrainConfig

PLAN_FILE = "plan.json"
PLAN_VERSION = 1
DEFAULT_BUDGET_S = 600.0
"""The default time budget: 10 minutes."""


def signature(data: PreparedData) -> str:
    """A short hash of the pairs (ids, file sizes and times): a plan is for this data only."""
    h = hashlib.sha256()
    for ident in data.ids:
        for path in (data.images[ident], data.masks[ident]):
            st = os.stat(path)
            line = f"{ident}\0{st.st_size}\0{st.st_mtime_ns}\n"  # a non-UTF-8 name: its bytes
            h.update(line.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def make_plan(
    data: PreparedData | str | os.PathLike,
    budget_s: float = DEFAULT_BUDGET_S,
    *,
    fixed: Mapping[str, Any] | None = None,
    measure: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Fingerprint the training split, time a step, apply the rules.

    Args:
        data: A prepared folder or its pairs.
        budget_s: Time budget in seconds for ``unet train``.
        fixed: Settings the user gives (they shape the later rules: the step time is
            measured at the user's batch size, for instance).
        measure: Time training steps (False: no epochs planned, the budget callback
            alone keeps training inside the budget).
        progress: Progress bar for the fingerprint (a line on stderr says what the
            planning does in any case).

    Returns:
        The plan: ``settings`` and ``advice`` (value and reason each), ``fingerprint``,
        ``step``, ``time_budget_s``, ``signature``, ``data``, ``created``, ``version``.
    """
    if not isinstance(data, PreparedData):
        data = load_prepared(data)
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    base = TrainConfig()
    seed = fixed.get("seed", base.seed)
    split = data.split(fixed.get("val_fraction", base.val_fraction), seed)
    if not fixed.get("overfit_batch"):  # a split training would refuse, refused first
        check_split(split, data.root)
    timing = ", then timing a training step" if measure else ""
    status(f"planning {data.root}: reading {len(split['train'])} training images{timing}")
    fp = fingerprint(data, split["train"], seed=seed, progress=progress)
    measured: dict[str, Any] = {}

    def step_time(values: Mapping[str, Any]) -> float:
        """The first call times the planned step; a second one (progressive resizing)
        the half-size step, recorded under ``half_size``."""
        from unet_lowered.planning.steptime import measure_step_time

        # values already hold the user's settings; a half-size call overrides the size
        known = {k: v for k, v in {**fixed, **values}.items() if k in config_mod.FIELDS}
        known.pop("time_budget", None)
        cfg = TrainConfig(**known).validate()
        step = measure_step_time(cfg, data.channels, data.num_classes)
        if measured:
            measured["half_size"] = {**step, "image_size": cfg.image_size}
        else:
            measured.update(step)
        return step["step_s"] + step["augment_s"]

    network = {
        "depth": fixed.get("depth", base.depth),
        "padding": options.choose(fixed.get("padding", base.padding), options.PADDINGS, "padding"),
    }
    settings, advice = rules.plan_settings(
        fp,
        budget_s,
        step_time if measure else None,
        n_val=len(split["val"]),
        fixed=fixed,
        depth=network["depth"],
        padding=network["padding"],
    )
    for name, value in network.items():  # the sizes hold for it: `unet train DATA` takes it
        if value != getattr(base, name):
            flag = f"--{name} {value}"
            settings = {
                name: rules.Planned(value, f"{value}: the network this plan was made for ({flag})"),
                **settings,
            }
    return {
        "version": PLAN_VERSION,
        "network": network,
        "data": str(Path(data.root).resolve()),
        "signature": signature(data),
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "time_budget_s": budget_s,
        "settings": {k: v.to_json() for k, v in settings.items()},
        "advice": {k: v.to_json() for k, v in advice.items()},
        "step": measured or None,
        "fingerprint": fp.to_json(),
    }


def write_plan(plan: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``plan.json`` atomically.

    Raises:
        UnetError: The folder is not writable; the message suggests ``--out``.
    """
    from unet_lowered.io import atomic

    path = Path(path)
    try:
        return atomic.write_json(path, dict(plan))
    except UnetError as e:
        raise UnetError(f"{e}; write the plan elsewhere with --out FILE") from None


def read_plan(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``plan.json``.

    Raises:
        UnetError: Unreadable, not a plan, or from a newer version.
    """
    path = Path(path)
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UnetError(f"{path}: not a readable plan ({e}); run `unet plan DATA` again") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("settings"), dict):
        raise UnetError(f"{path}: not a plan (no settings); run `unet plan DATA` again")
    if not isinstance(plan.get("version"), int) or plan["version"] > PLAN_VERSION:
        raise UnetError(
            f"{path}: plan version {plan.get('version')!r} is newer than this unet-lowered "
            f"reads ({PLAN_VERSION}); upgrade the package or run `unet plan DATA` again"
        )
    problem = _plan_problem(plan)
    if problem:
        raise UnetError(f"{path}: {problem}; run `unet plan DATA` again")
    return plan


MAX_PLANNED_EPOCHS = 100_000
"""The most epochs a plan may hold (the rules plan tens to a few thousand)."""


def _plan_problem(plan: Mapping[str, Any]) -> str | None:
    """What is wrong with a plan's entries and planned values, or None.

    Every ``settings`` and ``advice`` entry is ``{"value": ..., "reason": text}``; the
    planned training settings pass :meth:`TrainConfig.validate` together, epochs are at
    most :data:`MAX_PLANNED_EPOCHS`, and the budget is a positive number of seconds.
    """
    for group in ("settings", "advice"):
        entries = plan.get(group, {})
        if not isinstance(entries, dict):
            return f"{group} is not an object of name: {{value, reason}}"
        for name, entry in entries.items():
            if not (
                isinstance(entry, dict)
                and "value" in entry
                and isinstance(entry.get("reason"), str)
            ):
                return f"{group}.{name} is not a {{value, reason}} entry (got {_shown(entry)})"
    budget = plan.get("time_budget_s")
    if budget is not None and not (
        isinstance(budget, int | float) and not isinstance(budget, bool) and 0 < budget < math.inf
    ):
        return f"time_budget_s must be a positive number of seconds, got {_shown(budget)}"
    planned = planned_values(plan)
    try:
        TrainConfig(**planned).validate()
    except SettingError as e:
        return f"the planned {e.setting}: {e}"
    except (TypeError, ValueError) as e:
        return f"the planned settings: {e}"
    if planned.get("epochs", 0) > MAX_PLANNED_EPOCHS:
        return f"epochs must be at most {MAX_PLANNED_EPOCHS}, got {planned['epochs']}"
    fingerprint = plan.get("fingerprint")
    touching = fingerprint.get("touching_fraction") if isinstance(fingerprint, dict) else None
    if touching is not None and not (
        isinstance(touching, int | float) and not isinstance(touching, bool) and 0 <= touching <= 1
    ):
        return f"fingerprint.touching_fraction must be a share from 0 to 1, got {_shown(touching)}"
    return None


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def no_plan_file(path: str | os.PathLike) -> str:
    """The line for a ``--plan`` file that is not there."""
    return f"{path}: no such plan file; make one with `unet plan DATA --out {path}`"


def _network(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The network geometry a plan's sizes were chosen for (plans from before the key
    were made for the defaults)."""
    base = TrainConfig()
    made = plan.get("network")
    made = made if isinstance(made, Mapping) else {}
    return {"depth": made.get("depth", base.depth), "padding": made.get("padding", base.padding)}


def _wanted_network(
    plan: Mapping[str, Any], user: Mapping[str, Any], user_cfg: TrainConfig
) -> dict[str, Any]:
    """The network depth and padding ``unet train`` asks for: the user's (a flag or the
    config file; ``user_cfg`` holds them resolved) where given, else the plan's."""
    return {k: getattr(user_cfg, k) if k in user else v for k, v in _network(plan).items()}


def _described(network: Mapping[str, Any]) -> str:
    return f"depth {network['depth']} with {network['padding']} padding"


def planned_values(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings of a plan, ``{name: value}``."""
    return {k: v["value"] for k, v in plan["settings"].items() if k in config_mod.FIELDS}


def resolve_settings(
    data: str | os.PathLike,
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    plan_file: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[TrainConfig, dict[str, Any]]:
    """The settings of ``unet train DATA``: defaults < plan < config file < flags.

    The plan is ``DATA/plan.json`` when it exists, was made for this data (same
    :func:`signature`), for the network depth and padding a flag or the config file
    gives (its sizes depend on them; not given, they are the plan's) and, when the
    user gives a time budget, for that budget (without one, the plan's own budget is
    used); otherwise it is made now (not written into DATA; the run records it), for
    the old plan's budget and network unless the user gives others. ``plan_file``
    (``--plan``) is used as it is, made for other data or another budget too, but not
    for another depth or padding. When the config file or a flag sets ``epochs`` and
    nothing sets ``time_budget``, the user chose the length: the planned budget is
    dropped.

    Args:
        data: The prepared folder.
        config_file: ``--config`` file, or None.
        overrides: Flag values (None: not given).
        plan_file: A plan to use instead of ``DATA/plan.json``; it must exist.
        progress: Progress bar for the fingerprint (a line on stderr says what the
            planning does in any case).

    Returns:
        ``(cfg, provenance)``: the validated settings, and ``{"sources": {setting:
        default|plan|file|flag}, "plan": the plan used, "started": time.perf_counter()
        at the start, "note": which plan file was used, or why the settings were
        planned anew}`` (the time budget counts from then).

    Raises:
        UnetError: A bad config file, flag or data folder (the messages of
            :func:`unet_lowered.training.config.resolve` and ``load_prepared``); a
            ``plan_file`` that is missing, bad, or made for another depth or padding.
    """
    started = time.perf_counter()
    file_values = config_mod.read_config_file(config_file) if config_file is not None else {}
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    user_cfg = config_mod.resolve(config_file, flags)  # bad values fail here, named as usual
    user = {**file_values, **flags}
    given = None if user.get("time_budget") is None else parse_duration(user["time_budget"])
    dataset = load_prepared(data)
    plan, note, kept_budget, kept_network = None, None, None, {}
    path = Path(plan_file) if plan_file is not None else Path(data) / PLAN_FILE
    if plan_file is not None and not path.is_file():
        raise UnetError(no_plan_file(path))
    if path.is_file():
        candidate = read_plan(path)
        its_budget = float(candidate.get("time_budget_s") or DEFAULT_BUDGET_S)
        made, wanted = _network(candidate), _wanted_network(candidate, user, user_cfg)
        kept_network = wanted  # a plan made anew keeps the network, as its budget
        if plan_file is None and candidate.get("signature") != signature(dataset):
            kept_budget = its_budget  # the budget the user chose for this data still holds
            note = (
                f"{path} was made for other data (images or masks changed, or copied: the "
                f"check includes file times); planned anew for its budget of {its_budget:g} s"
            )
        elif plan_file is None and given is not None and its_budget != given:
            note = (
                f"{path} was made for a budget of {its_budget:g} s, not {given:g} s; planned anew"
            )
        elif made != wanted and plan_file:
            raise UnetError(
                f"{path} was made for {_described(made)}, not {_described(wanted)} (its sizes "
                f"do not fit): make one with `unet plan {data} --depth {wanted['depth']} "
                f"--padding {wanted['padding']} --out FILE`, or leave out --plan"
            )
        elif made != wanted:
            kept_budget = its_budget  # sizes and steps differ with the network's geometry
            note = (
                f"{path} was made for {_described(made)}, not {_described(wanted)}; planned "
                f"anew for its budget of {its_budget:g} s"
            )
        else:
            plan = candidate
            length = (  # --epochs without --time-budget: no budget applies (README)
                "the epochs given; no time budget"
                if "epochs" in user and given is None
                else f"budget {its_budget:g} s"
            )
            note = f"using the plan in {path} ({length})"
    from_file = plan is not None
    if plan is None:
        budget_s = given if given is not None else (kept_budget or DEFAULT_BUDGET_S)
        if note is None:
            length = (
                "the epochs given"
                if "epochs" in user and given is None
                else f"a budget of {budget_s:g} s"
            )
            note = (
                f"no plan in {path}; planning for {length} (`unet plan` prints the choices "
                "and their reasons; the run records them)"
            )
        fixed = {**kept_network, **{k: v for k, v in user.items() if k != "time_budget"}}
        plan = make_plan(
            dataset, budget_s, fixed=fixed, measure="epochs" not in user, progress=progress
        )
    planned = planned_values(plan)
    if "epochs" in user and "time_budget" not in user:
        planned.pop("time_budget", None)
    merged = {k: v for k, v in planned.items() if k not in file_values}
    merged.update(flags)
    try:  # a size the network cannot take fails here (validate), not later
        cfg = config_mod.resolve(config_file, merged)
    except SettingError as e:
        if not from_file or e.setting not in planned or e.setting in user:
            raise
        flag = e.setting.replace("_", "-")  # a value from plan.json: say so
        raise SettingError(
            e.setting,
            f"{path}: {e} (the plan's {e.setting}; make the plan again with `unet plan "
            f"{data}`, or give --{flag})",
        ) from None
    sources = {}
    for name in sorted(config_mod.FIELDS):
        if name in flags:
            sources[name] = "flag"
        elif name in file_values:
            sources[name] = "file"
        elif name in planned:
            sources[name] = "plan"
        else:
            sources[name] = "default"
    return cfg, {"sources": sources, "plan": plan, "started": started, "note": note}


def plan_table(plan: Mapping[str, Any]) -> Any:
    """A rich table of the planned values and their reasons."""
    from rich.table import Table

    network = "" if _network(plan) == _network({}) else f", {_described(_network(plan))}"
    table = Table(title=f"plan for {plan['data']} (budget {plan['time_budget_s']:g} s{network})")
    table.add_column("setting", no_wrap=True)  # the flag's name: never cut (the reason wraps)
    table.add_column("value", overflow="fold")
    table.add_column("reason", ratio=1)
    for group in ("settings", "advice"):
        for name, entry in plan[group].items():
            shown = entry["value"]
            if isinstance(shown, list):
                shown = ", ".join(str(v) for v in shown) or "none"
            table.add_row(name.replace("_", "-"), str(shown), entry["reason"])
    return table


def fingerprint_table(plan: Mapping[str, Any]) -> Any:
    """A rich table of the fingerprint's main figures."""
    from rich.table import Table

    fp = plan["fingerprint"]
    table = Table(title=f"fingerprint ({fp['n_sampled']} of {fp['n_images']} training pairs)")
    table.add_column("measure")
    table.add_column("value")
    sym = fp["symmetry"]

    def kept(group: str) -> str:
        return ", ".join(
            f"{k}: {'kept' if v['kept'] else 'changed' if v['kept'] is False else '?'}"
            for k, v in sym[group].items()
        )

    rows = [
        (
            "image size (median, min, max)",
            f"{fp['sizes']['median_hw']}, {fp['sizes']['min_hw']}, {fp['sizes']['max_hw']}",
        ),
        (
            "channels, bit depth",
            f"{fp['channels']} (gray as RGB {fp['gray_as_rgb']:.0%}), {fp['bit_depth']}-bit",
        ),
        ("foreground share", f"{fp['foreground_fraction']:.1%}"),
        ("objects per image (median)", f"{fp['objects_per_image']:g}"),
        (
            "object area (p05, median, p95)",
            f"{fp['object_area']['p05']:g}, {fp['object_area']['median']:g}, "
            f"{fp['object_area']['p95']:g} px",
        ),
        ("touching objects", f"{fp['touching_fraction']:.0%}"),
        ("masks with holes", f"{fp['holes_fraction']:.0%}"),
        ("layout symmetry", kept("layout")),
        ("texture symmetry", kept("texture")),
    ]
    pol = fp.get("polarity")
    if pol:
        n = pol["dark_objects"] + pol["light_objects"]
        rows.insert(
            3,
            (
                "objects darker than background",
                f"{pol['dark_objects']} of {n} (the median tells {pol['median_agrees']})",
            ),
        )
    for row in rows:
        table.add_row(*row)
    return table
