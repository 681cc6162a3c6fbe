"""trainer.distribution: TF_CONFIG read and checked before TensorFlow starts; which task is the chief."""

from __future__ import annotations

import json
import re

import pytest

from pipeline import cli
from trainer import distribution

BAD_TF_CONFIGS = [
    ("worker 0", "TF_CONFIG is not a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', 'TF_CONFIG has no "cluster" object'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', 'TF_CONFIG has no "task" object'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "task index 2 is out of range"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": -1}}', "task index -1 is out of"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "chief", "index": 0}}', "task type 'chief' is not in"),
    ('{"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}', '"host:port" addresses'),
    ('{"cluster": {"ps": ["a:1"], "worker": ["b:2"]}, "task": {"type": "ps", "index": 0}}', "names a 'ps' job"),
]


@pytest.mark.parametrize(("tf_config", "message"), BAD_TF_CONFIGS)
def test_a_wrong_tf_config_is_refused_saying_what_is_wrong(tf_config, message):
    with pytest.raises(cli.UsageError, match=re.escape(message)):
        distribution.read_tf_config(tf_config)


def test_unset_or_one_task_is_no_cluster():
    assert distribution.read_tf_config(None) is None
    assert distribution.read_tf_config("  ") is None
    assert distribution.read_tf_config(json.dumps({"cluster": {"worker": ["a:1"]}})) is None


@pytest.mark.parametrize(
    ("jobs", "task", "chief"),
    [
        ({"worker": ["a:1", "b:2"]}, ("worker", 0), True),
        ({"worker": ["a:1", "b:2"]}, ("worker", 1), False),
        ({"chief": ["c:0"], "worker": ["a:1"]}, ("worker", 0), False),
        ({"chief": ["c:0"], "worker": ["a:1"]}, ("chief", 0), True),
    ],
)
def test_worker_0_is_the_chief_unless_a_chief_is_named(jobs, task, chief):
    text = json.dumps({"cluster": jobs, "task": {"type": task[0], "index": task[1]}})
    cluster = distribution.read_tf_config(text)
    assert cluster.is_chief is chief
    assert cluster.size == sum(map(len, jobs.values())) and cluster.describe() == f"{task[0]} {task[1]}"
    others = {f"{job} {index}" for job, addresses in jobs.items() for index in range(len(addresses))} - {
        cluster.describe()
    }
    assert set(cluster.peers()) == others
