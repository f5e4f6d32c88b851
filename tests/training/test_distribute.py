"""``unet train --distribute data-parallel``: the same step on 1 and 2 devices, the run
folder, several processes, and the errors.

The device counts must be set before a backend starts (``XLA_FLAGS`` for JAX, logical
devices for TensorFlow), so those tests run their work in fresh Python processes.

Tolerances of the step comparisons: one SGD step (no momentum) on the same weights and
the same fixed batch. On 2 devices each device sums the loss and gradient terms of its
half of the batch and the halves are then added (JAX: XLA's all-reduce of the sharded
computation; TensorFlow: MirroredStrategy's all-reduce), so only the order of float32
additions differs from 1 device. That moves the loss by a few float32 ulps (relative
1e-6 at most; we allow 1e-5) and each weight by at most ``lr * |dg|`` with ``|dg|`` a
few ulps of the gradient (we allow 1e-5 absolute with lr 0.1, while the step itself
moves the weights by more than 1e-3, so a wrong gradient scale such as a loss summed
instead of averaged over the devices fails).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from unet_lowered.errors import SettingError, UnetError
from unet_lowered.training import distribute
from unet_lowered.training.config import RunConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[2]
UNET = str(Path(sys.executable).with_name("unet"))
HAS_JAX = importlib.util.find_spec("jax") is not None
needs_jax = pytest.mark.skipif(not HAS_JAX, reason="jax not installed (extra 'backends')")

STEP = """
import json, sys
import numpy as np, keras
from unet_lowered.model import unet
from unet_lowered.training import distribute
from unet_lowered.training.losses import get_loss

def step(dp):
    keras.utils.set_random_seed(0)
    with dp.scope():
        model = unet(input_shape=(32, 32, 1), num_classes=1, base_filters=4, depth=2)
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=get_loss("bce+dice", 1))
        loss = float(model.train_on_batch(x, y))
    return loss, [np.asarray(w) for w in model.get_weights()]

rng = np.random.default_rng(0)
x = rng.normal(size=(4, 32, 32, 1)).astype("float32")
y = (rng.random((4, 32, 32, 1)) > 0.6).astype("float32")
keras.utils.set_random_seed(0)
weights = unet(input_shape=(32, 32, 1), num_classes=1, base_filters=4, depth=2).get_weights()
one = step(distribute.plan("none", 4))
dp = distribute.plan("data-parallel", 4)
two = step(dp)
try:
    distribute.plan("data-parallel", 3)
    odd = None
except Exception as e:
    odd = str(e)
print("RESULT", json.dumps({
    "devices": dp.device_count,
    "loss": [one[0], two[0]],
    "max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(one[1], two[1])),
    "max_step": max(float(np.abs(a - w).max()) for a, w in zip(one[1], weights)),
    "odd_batch": odd,
    "info": dp.describe(),
}))
"""

TF_DEVICES = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
"""

TF_FEED = """
# fit through the project's tf.data feed: 5 images, batch 4; on 2 replicas the last
# batch (1 image, split unevenly) is dropped, so one epoch is the first step only
from unet_lowered.training.feed import as_tf_dataset

class Batches:
    def __init__(self, n):
        self.ids = list(range(n))
        self.x = np.concatenate([x, x[:1]])[:n]; self.y = np.concatenate([y, y[:1]])[:n]
    def __len__(self):
        return -(-len(self.ids) // 4)
    def __getitem__(self, i):
        return self.x[4 * i : 4 * i + 4], self.y[4 * i : 4 * i + 4]
    def on_epoch_begin(self):
        pass

def fit(dp, n):
    with dp.scope():
        model = unet(input_shape=(32, 32, 1), num_classes=1, base_filters=4, depth=2)
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=get_loss("bce+dice", 1))
        feed = as_tf_dataset(dp.feed(Batches(n), True))
        hist = model.fit(feed, epochs=1, verbose=0, shuffle=False)
    return hist.history["loss"][0], model.get_weights()

a, b = fit(distribute.plan("none", 4), 4), fit(dp, 5)
print("FEED", json.dumps({
    "loss": [float(a[0]), float(b[0])],
    "max_weight_diff": max(float(np.abs(p - q).max()) for p, q in zip(a[1], b[1])),
}))
"""


def run_python(code: str, backend: str, devices: int | None = None, timeout: int = 300) -> str:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def result(stdout: str, tag: str = "RESULT") -> dict:
    line = next(s for s in stdout.splitlines() if s.startswith(tag + " "))
    return json.loads(line[len(tag) + 1 :])


def check_same_step(r: dict) -> None:
    assert r["devices"] == 2
    one, two = r["loss"]
    assert two == pytest.approx(one, rel=1e-5)
    assert r["max_step"] > 1e-3  # the step moved the weights, so the comparison can fail
    assert r["max_weight_diff"] < 1e-5
    assert "multiple of 2" in r["odd_batch"]


@needs_jax
@pytest.mark.slow  # a fresh process or Ray run: CI runs it (make test-slow)
def test_jax_step_on_two_devices_equals_one_device():
    r = result(run_python(STEP, "jax", devices=2))
    check_same_step(r)
    assert r["info"]["implementation"] == "keras.distribution.DataParallel"
    assert r["info"]["per_device_batch_size"] == 2


@pytest.mark.slow  # a fresh process or Ray run: CI runs it (make test-slow)
def test_tensorflow_mirrored_step_on_two_logical_cpus_equals_one_device():
    out = run_python(TF_DEVICES + STEP + TF_FEED, "tensorflow")
    r = result(out)
    check_same_step(r)
    assert r["info"]["implementation"] == "tf.distribute.MirroredStrategy"
    assert len(r["info"]["devices"]) == 2
    feed = result(out, "FEED")
    assert feed["loss"][1] == pytest.approx(feed["loss"][0], rel=1e-5)
    assert feed["max_weight_diff"] < 1e-5


# ----------------------------------------------------------------------------- CLI runs


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny `unet synth` set, prepared: 8 training images of 32 px."""
    root = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    for cmd in (
        [UNET, "synth", str(root / "syn"), "--count", "8", "--test-count", "2", "--size", "32"],
        [UNET, "prepare", str(root / "syn"), str(root / "prep")],
    ):
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    return root


TRAIN_FLAGS = [
    "--distribute", "data-parallel", "--epochs", "2", "--batch-size", "2",
    "--image-size", "32", "--base-filters", "4", "--depth", "2", "--val-fraction", "0.3",
]  # fmt: skip


def check_run(run: Path, processes: int) -> dict:
    config = json.loads((run / "config.json").read_text())
    info = config["distribute_info"]
    assert config["distribute"] == "data-parallel"
    assert info["device_count"] == 2 and info["processes"] == processes
    assert info["global_batch_size"] == 2 and info["per_device_batch_size"] == 1
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2  # header + 2 epochs
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 2
    for name in ("model.keras", "last.keras", "metrics.json", "split.json"):
        assert (run / name).is_file(), name
    return config


@needs_jax
@pytest.mark.slow  # a fresh process or Ray run: CI runs it (make test-slow)
def test_jax_cli_run_on_two_devices_is_a_normal_run_folder(prepared):
    run = prepared / "run2dev"
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    cmd = [UNET, "train", str(prepared / "prep"), "--out", str(run), *TRAIN_FLAGS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_run(run, processes=1)
    out = prepared / "pred"
    cmd = [
        UNET,
        "predict",
        str(run),
        str(prepared / "syn" / "test_images"),
        "-r",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    masks = sorted(p.name for p in out.glob("*.png"))
    assert len(masks) == 2 and (out / "predictions.csv").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_jax
@pytest.mark.slow  # a fresh process or Ray run: CI runs it (make test-slow)
def test_two_processes_leave_one_run_folder_written_by_process_0(prepared):
    run = prepared / "run2proc"
    port = free_port()
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_PLATFORMS": "cpu",
    }
    procs = []
    for k in range(2):
        cmd = [UNET, "train", str(prepared / "prep"), "--out", str(run), *TRAIN_FLAGS]
        cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
        cmd += ["--process-id", str(k)]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=500))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_stdout, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    assert "best validation Dice" in outputs[0][0]
    assert "process 1 done" in outputs[1][0]
    config = check_run(run, processes=2)
    assert len(config["distribute_info"]["devices"]) == 2


@needs_jax
@pytest.mark.slow  # a fresh process
def test_process_0_alone_gives_up_in_one_line_before_jax_aborts():
    """JAX ends a coordinator whose peers never join with a C++ stack trace after 5
    minutes; process 0 now ends a few seconds earlier with one line (the wait shortened
    here to 8 s)."""
    code = (
        "import sys\n"
        "from unet_lowered.training import distribute\n"
        "distribute.JOIN_TIMEOUT_S = 8\n"
        "distribute.initialize(distribute.Cluster(sys.argv[1], 3, 0))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    address = f"127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-c", code, address], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: process 0: the other 2 process(es) did not all join at {address} within 8 s; "
        "start them with the same --coordinator and --num-processes (--process-id 1..2), "
        "then run this again"
    )
    assert "Traceback" not in done.stderr and "Check failed" not in done.stderr


# ----------------------------------------------------------------------------- in-process


def test_settings_and_config_json_round_trip():
    cfg = TrainConfig(distribute="data-parallel").validate()
    info = {"mode": "data-parallel", "device_count": 2, "processes": 1}
    run = RunConfig(settings=cfg, image_size=(32, 32), distribute_info=info)
    back = RunConfig.from_json(json.loads(json.dumps(run.to_json())))
    assert back.settings.distribute == "data-parallel" and back.distribute_info == info
    with pytest.raises(SettingError, match="data-parallel") as e:
        TrainConfig(distribute="horovod").validate()
    assert e.value.setting == "distribute"


@pytest.mark.parametrize(
    ("cluster", "setting", "message"),
    [
        (distribute.Cluster(None, 2, 0), "coordinator", "--coordinator HOST:PORT"),
        (distribute.Cluster("localhost", 2, 0), "coordinator", "HOST:PORT"),
        (distribute.Cluster("h:1", 2, 2), "process_id", "0..1"),
        (distribute.Cluster("h:1", None, 0), "num_processes", "at least 1"),
    ],
)
def test_bad_cluster_is_one_named_error(cluster, setting, message):
    with pytest.raises(SettingError, match=message) as e:
        cluster.check()
    assert e.value.setting == setting


def test_a_peer_that_cannot_reach_process_0_says_so_in_one_line(capsys):
    """JAX would abort with a C++ stack trace after 5 minutes; the port is tried first."""
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = distribute.Cluster(f"127.0.0.1:{port}", 2, 1)
    with pytest.raises(
        UnetError, match=rf"^process 1: nothing answered at 127\.0\.0\.1:{port} for 1 s"
    ):
        distribute._wait_for_coordinator(cluster, timeout=1)
    assert capsys.readouterr().out == f"process 1: waiting for process 0 at 127.0.0.1:{port}\n"
    with socket.socket() as listening:  # process 0's coordinator: answered at once
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        distribute._wait_for_coordinator(distribute.Cluster(f"127.0.0.1:{port}", 2, 1), 5)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--coordinator/--num-processes need --distribute data-parallel"),
        (["--distribute", "data-parallel", "--folds", "2"], "--folds trains on one host"),
    ],
)
def test_cluster_flags_that_cannot_work_are_refused_before_joining(
    prepared, tmp_path, extra, message
):
    """Refused at once: joining first would wait 5 minutes for peers that never come."""
    from typer.testing import CliRunner

    from unet_lowered.cli import app

    args = ["train", str(prepared), "--out", str(tmp_path / "run"), "--coordinator"]
    args += ["127.0.0.1:1", "--num-processes", "2", "--process-id", "0", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and isinstance(result.exception, UnetError)
    assert message in str(result.exception)


def test_cluster_from_keras_environment(monkeypatch):
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "10.0.0.1:1234,10.0.0.2:1234")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "1")
    got = distribute.Cluster.from_env(distribute.Cluster(process_id=0))
    assert got == distribute.Cluster("10.0.0.1:1234", 2, 0)  # the flag wins over the variable


def test_tensorflow_refuses_several_hosts_and_torch_refuses_distribution():
    import keras

    assert keras.backend.backend() == "tensorflow"
    with pytest.raises(SettingError, match="KERAS_BACKEND=jax"):
        distribute.plan("data-parallel", 4, distribute.Cluster("127.0.0.1:1", 2, 0))
    with pytest.raises(SettingError, match="need --distribute data-parallel"):
        distribute.plan("none", 4, distribute.Cluster("127.0.0.1:1", 2, 0))
    code = textwrap.dedent(
        """
        from unet_lowered.training import distribute
        try:
            distribute.plan("data-parallel", 4)
        except Exception as e:
            print("ERROR", type(e).__name__, e)
        """
    )
    out = run_python(code, "torch")
    assert "ERROR SettingError" in out and "not available on the torch backend" in out


def test_tensorflow_data_parallel_on_one_device_says_so():
    """A machine without GPUs: MirroredStrategy has one CPU device, and the run says so."""
    code = textwrap.dedent(
        """
        import sys
        sys.stderr = sys.stdout
        from unet_lowered.training import distribute
        print("DEVICES", distribute.plan("data-parallel", 4).describe()["device_count"])
        """
    )
    out = run_python(code, "tensorflow")
    assert "--distribute data-parallel: TensorFlow sees one device" in out
    assert "DEVICES 1" in out


class FakeSequence:
    """Batches of 4 of ids 0..n-1: x holds the id, y its negative."""

    def __init__(self, n: int, batch: int = 4):
        self.ids = list(range(n))
        self.batch = batch
        self.epochs = 0

    def __len__(self) -> int:
        return -(-len(self.ids) // self.batch)

    def __getitem__(self, i):
        x = np.array(self.ids[i * self.batch : (i + 1) * self.batch], np.float32)
        return x, -x

    def on_epoch_begin(self):
        self.epochs += 1


def test_process_share_slices_drops_and_pads():
    seq = FakeSequence(10)  # batches [0..3], [4..7], [8, 9]
    train = distribute.ProcessShare(seq, 4, devices=4, processes=2, process_id=1, pad=False)
    assert len(train) == 2  # the last, partial batch is dropped
    x, y = train[1]
    assert x.tolist() == [6, 7] and y.tolist() == [-6, -7]
    val = distribute.ProcessShare(seq, 4, devices=4, processes=2, process_id=0, pad=True)
    assert len(val) == 3
    x, y, w = val[2]  # [8, 9] padded with two copies of 8 at weight 0; process 0: first half
    assert x.tolist() == [8, 9] and w.tolist() == [1, 1]
    x, y, w = distribute.ProcessShare(seq, 4, 4, 2, 1, pad=True)[2]
    assert x.tolist() == [8, 8] and w.tolist() == [0, 0]
    train.on_epoch_begin()
    assert seq.epochs == 1
    with pytest.raises(SettingError, match="only 3 training image"):
        distribute.ProcessShare(FakeSequence(3), 4, devices=4, processes=1, process_id=0, pad=False)


def test_one_device_plan_changes_nothing():
    dp = distribute.plan("none", 3)
    assert not dp.active and dp.describe() is None and distribute.is_writer(dp)
    seq = FakeSequence(5)
    assert dp.feed(seq, True) is seq
    with dp.scope():
        pass
