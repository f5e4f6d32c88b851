"""``benchmarks/op_profile.py``'s grouping of ops into kinds, on names whose kind is known."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
REST = "the rest (Adam, loss, metrics, idle)"


@pytest.fixture
def op_profile(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import op_profile

    return op_profile


@pytest.mark.parametrize(
    ("op", "kind"),
    [
        ("_MklNativeConv2DBackpropFilterWithBias", "convolutions"),  # not the bias's
        ("aten::convolution_backward", "convolutions"),
        ("ReluGrad", "ReLU and its gradient"),
        ("aten::threshold_backward", "ReLU and its gradient"),
        ("BiasAddGrad", "bias add and its gradient"),
        ("ConcatV2", "skip connections (concat, its gradient's slices, gradient sums)"),
        ("aten::add", "skip connections (concat, its gradient's slices, gradient sums)"),
        ("aten::add_", REST),  # Adam's in-place update
        ("_MklNativeMaxPoolGrad", "max pooling"),
        ("Cast", "casts and copies"),
        ("AssignSubVariableOp", REST),
    ],
)
def test_each_op_falls_in_its_kind(op_profile, op: str, kind: str) -> None:
    assert op_profile.kind_of(op) == kind


def test_the_report_sums_each_kind_and_lists_the_largest_ops_first(op_profile) -> None:
    ops = {"ReluGrad": [3.0, 20], "Conv2D": [5.0, 10], "Relu": [1.0, 20], "Mul": [1.0, 60]}
    text = op_profile.report("TF", 12.4, ops, top=2)
    assert "step 12 ms (no profiler); ops' self time 10 ms per step" in text
    assert "| convolutions | 5.0 | 50% |" in text
    assert "| ReLU and its gradient | 4.0 | 40% |" in text
    assert f"| {REST} | 1.0 | 10% |" in text
    listed = [line for line in text.splitlines() if line.startswith("| `")]
    assert listed == ["| `Conv2D` | 5.0 | 10 |", "| `ReluGrad` | 3.0 | 20 |"]


def test_rounds_are_summed_up_by_their_medians(op_profile) -> None:
    rounds = [
        {"step_ms": 150.0, "ops": {"Conv2D": [80.0, 10], "ReluGrad": [20.0, 20]}},
        {"step_ms": 190.0, "ops": {"Conv2D": [110.0, 10]}},  # no ReluGrad this round
        {"step_ms": 160.0, "ops": {"Conv2D": [90.0, 10], "ReluGrad": [30.0, 20]}},
    ]
    step_ms, ops = op_profile.median_rounds(rounds)
    assert step_ms == 160.0
    assert ops == {"Conv2D": [90.0, 10], "ReluGrad": [20.0, 20]}  # medians of 0, 20, 30
