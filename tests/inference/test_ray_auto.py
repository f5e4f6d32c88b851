"""`unet predict --engine ray --ray-address auto` with no Ray cluster on this machine.

Its own module: Ray's "auto" finds any cluster running on the machine (it looks for
the processes), such as the one the engine tests start in test_ray_engine.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import cv2
import pytest

from run_fixtures import bright_model, disk_image, make_run


@pytest.mark.slow  # a fresh process importing Ray
def test_auto_without_a_cluster_writes_nothing(tmp_path) -> None:
    """`--ray-address auto` with no cluster running was refused after the job had made
    --out with a header-only predictions.csv and a journal; it is refused first."""
    pytest.importorskip("ray")
    if shutil.which("pgrep") and subprocess.run(["pgrep", "-f", "gcs_server"]).returncode == 0:
        pytest.skip("a Ray cluster runs on this machine: 'auto' would find it")
    run = make_run(tmp_path / "run", bright_model(32))
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "a.png"), disk_image(64, 64)[0])
    code = (
        "import sys\n"
        "from unet_lowered.errors import UnetError\n"
        "from unet_lowered.inference.ray_engine import predict_files_ray\n"
        "try:\n"
        "    predict_files_ray(sys.argv[1], [sys.argv[2]], sys.argv[3], address='auto',"
        " progress=False)\n"
        "except UnetError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmp_path / "ray")  # where Ray looks for a cluster on this node
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", code, str(run), str(inputs), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "--ray-address: cannot connect to auto" in done.stdout, done.stdout + done.stderr
    assert not out.exists()
