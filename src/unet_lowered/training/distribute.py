"""``unet train --distribute data-parallel``: one model, the batch split across devices.

Each backend's own data-parallel machinery does the work; this module picks it,
checks the settings against the devices it found and says who writes the run folder:

* JAX: :class:`keras.distribution.DataParallel` over ``keras.distribution.list_devices()``
  (all devices of all processes). Several processes (hosts) join through
  :func:`keras.distribution.initialize` (``--coordinator HOST:PORT --num-processes N
  --process-id K``, or Keras' ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` /
  ``KERAS_DISTRIBUTION_NUM_PROCESSES`` / ``KERAS_DISTRIBUTION_PROCESS_ID``). Each
  process feeds its own contiguous slice of every global batch; the variables are
  replicated, so each process holds the whole model. On CPU the processes talk through
  JAX's CPU collectives (``jax_cpu_collectives_implementation``, gloo by default).
* TensorFlow: :class:`tf.distribute.MirroredStrategy` over the local GPUs (or the
  logical CPU devices where there is no GPU), one host. Keras 3's ``fit`` distributes
  the ``tf.data`` feed itself (``experimental_distribute_dataset`` in its epoch
  iterator), so the feed is handed over unchanged.
* torch: not supported (a one-line error).

``--batch-size`` stays the global batch: every step averages the loss over the same
images as on one device, so the gradients, the learning rate and the schedule are
those of a one-device run (nothing is rescaled). Only process 0 writes the run folder
(:func:`is_writer`); the run records the devices and processes in
``config.json`` (:meth:`DataParallelPlan.describe`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from unet_lowered import options
from unet_lowered.errors import SettingError, UnetError

MODES = options.DISTRIBUTE_MODES
"""``--distribute`` values: ``none`` (one device) or ``data-parallel``."""

ENV_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"


@dataclass(frozen=True)
class Cluster:
    """How this process joins a multi-process (multi-host) run; all None: one process.

    Attributes:
        coordinator: ``HOST:PORT`` of process 0 (JAX's coordinator service).
        num_processes: Processes in the run.
        process_id: This process, ``0 .. num_processes - 1``; 0 writes the run folder.
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @classmethod
    def from_env(cls, base: Cluster | None = None) -> Cluster:
        """``base`` with what it leaves unset taken from Keras' ``KERAS_DISTRIBUTION_*``."""
        base = base or cls()

        def number(name: str, value: int | None) -> int | None:
            if value is not None or not os.environ.get(name):
                return value
            try:
                return int(os.environ[name])
            except ValueError:
                raise SettingError(
                    "distribute", f"{name}={os.environ[name]!r} must be a whole number"
                ) from None

        addresses = base.coordinator or os.environ.get(ENV_ADDRESSES) or None
        coordinator = addresses.split(",")[0] if addresses else None
        return cls(
            coordinator=coordinator,
            num_processes=number(ENV_PROCESSES, base.num_processes),
            process_id=number(ENV_PROCESS_ID, base.process_id),
        )

    @property
    def multi_process(self) -> bool:
        return self.coordinator is not None or (self.num_processes or 1) > 1

    def check(self) -> Cluster:
        """Refuse an incomplete or inconsistent cluster description.

        Raises:
            SettingError: A missing or out-of-range part, named with its flag.
        """
        if not self.multi_process:
            return self
        if self.coordinator is None:
            raise SettingError(
                "coordinator",
                "--num-processes needs --coordinator HOST:PORT (the address of process 0)",
            )
        host, _, port = self.coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise SettingError(
                "coordinator", f"--coordinator must be HOST:PORT, got {self.coordinator!r}"
            )
        if self.num_processes is None or self.num_processes < 1:
            raise SettingError(
                "num_processes",
                f"--num-processes must be at least 1 with --coordinator, got {self.num_processes}",
            )
        if self.process_id is None or not 0 <= self.process_id < self.num_processes:
            raise SettingError(
                "process_id",
                f"--process-id must be in 0..{self.num_processes - 1}, got {self.process_id}",
            )
        return self


_initialized: Cluster | None = None

JOIN_TIMEOUT_S = 300
"""How long a process waits for the others (JAX's own ``initialization_timeout``)."""


def _wait_for_coordinator(cluster: Cluster, timeout: float = JOIN_TIMEOUT_S) -> None:
    """Wait until process 0's coordinator accepts connections.

    JAX terminates the whole process with a C++ stack trace when it cannot reach the
    coordinator in time; trying the address first turns that into one line.

    Raises:
        UnetError: Nothing answers at ``cluster.coordinator`` within ``timeout`` seconds.
    """
    import socket
    import time

    host, _, port = cluster.coordinator.rpartition(":")
    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise UnetError(
                    f"process {cluster.process_id}: nothing answered at {cluster.coordinator} "
                    f"for {timeout:g} s ({e.strerror or e}); start process 0 with the same "
                    "--coordinator and --num-processes, and check the address and firewall"
                ) from None
        if not said:
            print(
                f"process {cluster.process_id}: waiting for process 0 at {cluster.coordinator}",
                flush=True,
            )
            said = True
        time.sleep(0.5)


def initialize(cluster: Cluster) -> None:
    """Join the multi-process run (JAX), once per process; one process: nothing to do.

    Call it before JAX computes anything: ``unet train`` calls it before its other work,
    :func:`plan` (in ``train()``) otherwise.

    Raises:
        SettingError: Several processes on a backend other than JAX, or a bad cluster.
    """
    global _initialized
    cluster = cluster.check()
    if not cluster.multi_process or _initialized == cluster:
        return
    backend = keras.backend.backend()
    if backend != "jax":
        raise SettingError(
            "distribute",
            f"training on several processes/hosts needs the JAX backend (this is {backend}); "
            "run with KERAS_BACKEND=jax (pip install 'unet-lowered[backends]')",
        )
    if _initialized is not None:
        raise UnetError(f"this process already joined {_initialized}; start a new process")
    if cluster.process_id == 0:
        others = cluster.num_processes - 1
        print(
            f"process 0 of {cluster.num_processes}: waiting at {cluster.coordinator} for "
            f"{others} more process(es) to join (for {JOIN_TIMEOUT_S // 60:g} minutes)",
            flush=True,
        )
    else:  # JAX aborts the process (no exception) if the coordinator never answers
        _wait_for_coordinator(cluster)
    import jax

    # CPU processes exchange gradients through gloo (JAX's default in 0.10; set for
    # older versions, where CPU collectives were off by default). GPUs use NCCL.
    with contextlib.suppress(AttributeError, ValueError):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    watchdog = _give_up_before_jax(cluster) if cluster.process_id == 0 else None
    try:
        keras.distribution.initialize(
            cluster.coordinator, cluster.num_processes, cluster.process_id
        )
    except Exception as e:  # unreachable coordinator, JAX already started, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnetError(
            f"could not join the run at {cluster.coordinator} as process {cluster.process_id} "
            f"of {cluster.num_processes} ({first}); start every process with the same "
            "--coordinator and --num-processes, process 0 reachable at that address"
        ) from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
    _initialized = cluster


def _give_up_before_jax(cluster: Cluster) -> Any:
    """A timer that ends process 0 with one line a few seconds before JAX would abort it
    with a C++ stack trace (its coordinator waits :data:`JOIN_TIMEOUT_S` for the others).
    Started before joining and cancelled once every process has joined."""
    import threading

    def give_up() -> None:
        others = cluster.num_processes - 1
        sys.stderr.write(
            f"error: process 0: the other {others} process(es) did not all join at "
            f"{cluster.coordinator} within {JOIN_TIMEOUT_S:g} s; start them with the same "
            f"--coordinator and --num-processes (--process-id 1..{others}), then run this "
            "again\n"
        )
        sys.stderr.flush()
        os._exit(1)  # JAX's join blocks the main thread; nothing else can end it cleanly

    timer = threading.Timer(max(1.0, JOIN_TIMEOUT_S - 5), give_up)
    timer.daemon = True
    timer.start()
    return timer


@dataclass(frozen=True)
class DataParallelPlan:
    """The devices a run trains on and how a global batch is split among them.

    Built by :func:`plan`; ``mode == "none"`` is the ordinary one-device run.
    """

    mode: str = "none"
    backend: str = ""
    devices: tuple[str, ...] = ()
    processes: int = 1
    process_id: int = 0
    batch_size: int = 1
    strategy: Any = field(default=None, compare=False, repr=False)

    @property
    def active(self) -> bool:
        return self.mode != "none"

    @property
    def device_count(self) -> int:
        return max(1, len(self.devices))

    @property
    def per_process_batch(self) -> int:
        return self.batch_size // self.processes

    def describe(self) -> dict[str, Any] | None:
        """What ``config.json`` records under ``distribute_info`` (None for one device)."""
        if not self.active:
            return None
        per_device = self.batch_size // self.device_count
        return {
            "mode": self.mode,
            "backend": self.backend,
            "implementation": (
                "keras.distribution.DataParallel"
                if self.backend == "jax"
                else "tf.distribute.MirroredStrategy"
            ),
            "devices": list(self.devices),
            "device_count": self.device_count,
            "processes": self.processes,
            "global_batch_size": self.batch_size,
            "per_device_batch_size": per_device,
            "note": (
                f"batch_size is the global batch: {self.batch_size} images a step, "
                f"{per_device} on each of {self.device_count} device(s) in "
                f"{self.processes} process(es); the loss is averaged over the global batch "
                "and the learning rate is not rescaled"
            ),
        }

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Build, compile (or load) and fit the model inside this; nothing for one device.

        On JAX the distribution is set only inside, so that code after training (the
        post-processing choice, prediction) runs on one device again.
        """
        if not self.active:
            yield
        else:  # DataParallel.scope() / MirroredStrategy.scope()
            with self.strategy.scope():
                yield

    def feed(self, sequence: Any, training: bool) -> Any:
        """What ``fit`` reads on JAX: this process's share of each global batch.

        Training drops an epoch's last batch when it is not a whole global batch
        (the seeded order changes every epoch, so every image is still seen): split
        unevenly, its replicas' mean losses would be weighted wrongly (measured on
        MirroredStrategy: a last batch of 1 image on 2 replicas took half the step).
        On JAX, validation pads its last batch with copies of its first image at
        sample weight 0, so ``val_dice`` and ``val_iou`` score exactly the validation
        images; on TensorFlow MirroredStrategy splits it unevenly, which the summed
        metrics handle. One device: the sequence unchanged.
        """
        if not self.active or (self.backend != "jax" and not training):
            return sequence
        return ProcessShare(
            sequence,
            self.batch_size,
            self.device_count,
            self.processes,
            self.process_id,
            pad=not training,
        )


def check_cluster_mode(mode: str, cluster: Cluster) -> None:
    """Several processes train data-parallel only; ``unet train`` checks it before the
    processes join (a process left waiting for the others would wait 5 minutes).

    Raises:
        SettingError: ``cluster`` has several processes and ``mode`` is ``none``.
    """
    if mode == "none" and cluster.multi_process:
        raise SettingError(
            "distribute", "--coordinator/--num-processes need --distribute data-parallel"
        )


def plan(mode: str, batch_size: int, cluster: Cluster | None = None) -> DataParallelPlan:
    """Resolve ``--distribute``: the devices, the strategy, the batch check.

    Args:
        mode: ``none`` or ``data-parallel``.
        batch_size: The global batch (``--batch-size``).
        cluster: Multi-process settings (JAX); None: one process, or Keras' environment
            variables when they are set.

    Raises:
        SettingError: An unknown mode, a backend that cannot distribute (torch; TF on
            several hosts), or a batch the devices do not divide.
    """
    mode = options.choose(mode, MODES, "distribute")
    cluster = Cluster.from_env(cluster).check()
    check_cluster_mode(mode, cluster)
    if mode == "none":
        return DataParallelPlan(batch_size=batch_size)
    backend = keras.backend.backend()
    if backend == "jax":
        initialize(cluster)
        devices = keras.distribution.list_devices()
        distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
        processes = distribution.num_processes
        process_id = int(distribution._process_id)
        strategy: Any = distribution
    elif backend == "tensorflow":
        if cluster.multi_process:
            raise SettingError(
                "distribute",
                "TensorFlow's MirroredStrategy trains on one host; for several hosts run "
                "with KERAS_BACKEND=jax (pip install 'unet-lowered[backends]')",
            )
        import tensorflow as tf

        logical = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        devices = [d.name for d in logical]
        if len(devices) == 1:
            print(
                f"--distribute data-parallel: TensorFlow sees one device ({devices[0]}); "
                "the run trains on it, as without the flag",
                file=sys.stderr,
                flush=True,
            )
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        processes, process_id = 1, 0
    else:
        raise SettingError(
            "distribute",
            f"--distribute data-parallel is not available on the {backend} backend; "
            "use KERAS_BACKEND=tensorflow (one host) or jax (one or several hosts)",
        )
    count = len(devices)
    if batch_size % count:
        raise SettingError(
            "batch_size",
            f"batch-size {batch_size} does not split evenly over {count} devices; "
            f"pass a multiple of {count} (it is the global batch)",
        )
    return DataParallelPlan(
        mode=mode,
        backend=backend,
        devices=tuple(str(d) for d in devices),
        processes=int(processes),
        process_id=process_id,
        batch_size=batch_size,
        strategy=strategy,
    )


def is_writer(dp: DataParallelPlan | None = None) -> bool:
    """True in the process that writes the run folder (process 0; the only one usually)."""
    if dp is not None:
        return dp.process_id == 0
    if keras.backend.backend() == "jax" and _initialized is not None:
        import jax

        return jax.process_index() == 0
    return True


class ProcessShare(keras.utils.PyDataset):
    """One process's contiguous slice of each global batch of a sequence (JAX).

    Process ``k`` of ``P`` gets images ``[k * B/P, (k+1) * B/P)`` of every global batch
    of ``B``; JAX assembles the global batch from the processes' slices
    (``jax.make_array_from_process_local_data``). A last batch that does not fill the
    devices is dropped (training) or padded with copies of its first image at sample
    weight 0 (validation); the batches are then ``(x, y, weight)``.
    """

    def __init__(
        self,
        sequence: Any,
        batch_size: int,
        devices: int,
        processes: int,
        process_id: int,
        pad: bool,
    ) -> None:
        super().__init__()
        self.sequence = sequence
        self.batch_size = batch_size
        self.devices = devices
        self.processes = processes
        self.process_id = process_id
        self.pad = pad
        n = len(sequence.ids)
        self._length = len(sequence) if pad else max(1, n // batch_size)
        if not pad and n < devices:
            raise SettingError(
                "batch_size",
                f"only {n} training image(s) for {devices} devices; add images or use fewer "
                "devices",
            )

    def __len__(self) -> int:
        return self._length

    def on_epoch_begin(self) -> None:
        self.sequence.on_epoch_begin()

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        x, y = self.sequence[index]
        n = len(x)
        if n % self.devices:
            if not self.pad:  # only when the whole split is smaller than one batch
                keep = n - n % self.devices
                x, y = x[:keep], y[:keep]
                n = keep
            else:
                total = math.ceil(n / self.devices) * self.devices
                extra = total - n
                x = np.concatenate([x, np.repeat(x[:1], extra, axis=0)])
                y = np.concatenate([y, np.repeat(y[:1], extra, axis=0)])
        weight = np.zeros(len(x), np.float32)
        weight[:n] = 1.0
        share = len(x) // self.processes
        part = slice(self.process_id * share, (self.process_id + 1) * share)
        if self.pad:
            return x[part], y[part], weight[part]
        return x[part], y[part]


__all__ = [
    "MODES",
    "Cluster",
    "DataParallelPlan",
    "ProcessShare",
    "initialize",
    "is_writer",
    "plan",
]
