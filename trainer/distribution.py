"""Where training runs: one device, a mirror over the devices of one machine, or several machines.

TF_CONFIG (set by Vertex AI, Kubernetes operators or by hand) naming more than one task means
MultiWorkerMirroredStrategy across those machines; otherwise MirroredStrategy over the given devices,
every GPU, or the CPU. The same training loop (trainer.train) runs in all three.
"""

from __future__ import annotations

import dataclasses
import json

from pipeline import cli

TASK_TYPES = ("chief", "worker")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The machines TF_CONFIG names and which of them this one is."""

    jobs: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def size(self) -> int:
        return sum(len(addresses) for addresses in self.jobs.values())

    @property
    def is_chief(self) -> bool:
        """The chief task, or worker 0 when there is no chief (TensorFlow's convention): it writes the outputs."""
        return self.task_type == "chief" or (
            self.task_type == "worker" and self.task_index == 0 and "chief" not in self.jobs
        )

    def describe(self) -> str:
        return f"{self.task_type} {self.task_index}"

    def peers(self) -> dict[str, str]:
        """The other tasks' addresses by name."""
        return {
            f"{job} {index}": address
            for job, addresses in self.jobs.items()
            for index, address in enumerate(addresses)
            if (job, index) != (self.task_type, self.task_index)
        }


def read_tf_config(text: str | None) -> Cluster | None:
    """The cluster TF_CONFIG describes, or None when it is unset or names one task; a UsageError when it is wrong."""
    if not text or not text.strip():
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise cli.UsageError("TF_CONFIG is not a JSON object; fix it or unset it")
    jobs, task = parsed.get("cluster"), parsed.get("task")
    if not isinstance(jobs, dict) or not jobs:
        raise cli.UsageError('TF_CONFIG has no "cluster" object naming the machines, e.g. {"worker": ["host0:port"]}')
    for job, addresses in jobs.items():
        if job not in TASK_TYPES:
            raise cli.UsageError(f"TF_CONFIG names a {job!r} job; this trainer takes {' and '.join(TASK_TYPES)} tasks")
        if not isinstance(addresses, list) or not addresses or not all(_is_address(item) for item in addresses):
            raise cli.UsageError(f'TF_CONFIG\'s "{job}" must be a list of "host:port" addresses, got {addresses!r}')
    if len(jobs.get("chief", [])) > 1:
        raise cli.UsageError("TF_CONFIG names more than one chief; name at most one")
    size = sum(len(addresses) for addresses in jobs.values())
    if size == 1 and not task:
        return None
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise cli.UsageError(
            'TF_CONFIG has no "task" object saying which machine this is, e.g. {"type": "worker", "index": 0}'
        )
    task_type, index = task["type"], task["index"]
    if task_type not in jobs:
        raise cli.UsageError(f"TF_CONFIG's task type {task_type!r} is not in its cluster ({', '.join(jobs)})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(jobs[task_type]):
        raise cli.UsageError(
            f"TF_CONFIG's task index {index!r} is out of range: the cluster has {len(jobs[task_type])} "
            f"{task_type} task(s), numbered from 0"
        )
    return None if size == 1 else Cluster(jobs, task_type, index)


def _is_address(item) -> bool:
    host, separator, port = item.rpartition(":") if isinstance(item, str) else ("", "", "")
    return bool(host and separator and port.isdigit())


def split_cpu(logical_devices: int):
    """Splits the CPU into logical devices (so a CPU-only machine can mirror); before TensorFlow initialises."""
    import tensorflow as tf

    if logical_devices < 2:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_devices)


def make_strategy(config: dict, cluster: Cluster | None):
    """MultiWorkerMirroredStrategy for a cluster; else MirroredStrategy over the devices the config names (when it
    names none: every GPU, else the logical CPU devices of logical_cpu_devices, else the CPU). Across machines the
    constructor waits for every worker."""
    import tensorflow as tf

    if cluster is not None:
        # A timeout on every all-reduce: a peer that hangs (rather than dies, which the strategy's health check
        # notices) stops the job instead of blocking it forever.
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=config["collective_timeout_seconds"])
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    devices = config["devices"]
    visible = [device.name for device in tf.config.list_logical_devices()]
    if devices is None:
        gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
        # No GPU: the CPU, or the logical devices split_cpu made of it (logical_cpu_devices) to mirror over.
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        devices = gpus or (cpus if config["logical_cpu_devices"] >= 2 else ["/cpu:0"])
    canonical = {tf.DeviceSpec.from_string(name).to_string().lower(): name for name in visible}
    for device in devices:
        spec = tf.DeviceSpec.from_string(device)
        full = tf.DeviceSpec(device_type=spec.device_type, device_index=spec.device_index)
        if not [name for key, name in canonical.items() if key.endswith(full.to_string().lower())]:
            raise cli.UsageError(f"devices: {device} is not a visible device; visible: {', '.join(visible)}")
    # NCCL refuses two replicas on one physical GPU (logical GPUs split from it): sum on one device then.
    gpus = [device for device in devices if tf.DeviceSpec.from_string(device).device_type == "GPU"]
    shared_gpu = len(gpus) > len(tf.config.list_physical_devices("GPU"))
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice() if shared_gpu else None
    )
