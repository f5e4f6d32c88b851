"""The memory estimate before training: the measured table, what is free, the warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from unet_lowered.training import memory

MB = 2**20

# (size, batch, precision, base filters, batch norm, peak RSS in MB): memory.py's table,
# measured on `unet train` (40 synthetic 1024-px X-rays, so a cache of about 10-40 MB).
MEASURED = [
    (128, 4, "mixed_bfloat16", 16, False, 1003),
    (256, 4, "mixed_bfloat16", 16, False, 1116),
    (256, 8, "mixed_bfloat16", 16, False, 1275),
    (512, 4, "mixed_bfloat16", 16, False, 1580),
    (512, 8, "mixed_bfloat16", 16, False, 2183),
    (256, 4, "float32", 16, False, 1244),
    (512, 4, "float32", 16, False, 2172),
    (512, 4, "mixed_bfloat16", 16, True, 2345),
    (512, 4, "mixed_bfloat16", 32, False, 2387),
]


@pytest.mark.parametrize(("size", "batch", "precision", "filters", "bn", "peak"), MEASURED)
def test_the_estimate_is_within_15_percent_of_each_measurement(
    size: int, batch: int, precision: str, filters: int, bn: bool, peak: int
) -> None:
    cache = 40 * size * size * 3  # uint16 image + uint8 mask per pixel
    estimate = memory.training_bytes((size, size), batch, precision, filters, bn, cache)
    assert abs(estimate - peak * MB) <= 0.15 * peak * MB


def test_the_estimate_grows_with_batch_size_precision_and_cache() -> None:
    one = memory.training_bytes((512, 512), 4, "mixed_bfloat16")
    assert one == 1_000_000_000 + 600 * 512 * 512 * 4
    assert memory.training_bytes((512, 512), 8, "mixed_bfloat16") - one == 600 * 512 * 512 * 4
    assert memory.training_bytes((512, 512), 4, "float32") - one == 600 * 512 * 512 * 4
    assert memory.training_bytes((512, 512), 4, "mixed_bfloat16", cache_bytes=5) - one == 5


def test_available_bytes_reads_meminfo_and_a_container_limit(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000000 kB\nMemFree:  100 kB\nMemAvailable:  2000000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert memory.available_bytes(meminfo, cgroup) == 2_048_000_000  # no cgroup files
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("400000000\n")
    assert memory.available_bytes(meminfo, cgroup) == 2_048_000_000  # no limit
    (cgroup / "memory.max").write_text("1000000000\n")
    assert memory.available_bytes(meminfo, cgroup) == 600_000_000  # the limit leaves less
    assert memory.available_bytes(tmp_path / "none", cgroup) == 600_000_000
    assert memory.available_bytes(tmp_path / "none", tmp_path / "none") is None


def test_the_warning_only_when_the_estimate_exceeds_what_is_free() -> None:
    assert memory.memory_warning(2_000_000_000, 3_000_000_000, (512, 512), 8) is None
    assert memory.memory_warning(2_000_000_000, None, (512, 512), 8) is None
    assert memory.memory_warning(5_200_000_000, 3_100_000_000, (1024, 1024), 8) == (
        "this training needs about 5.2 GB (1024x1024, batch 8) and 3.1 GB is free: the "
        'system may kill it ("Killed"); lower --batch-size or --image-size, or free memory'
    )
