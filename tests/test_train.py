"""trainer.train: the run's plan checked against the dataset before anything is written; the loop itself is
run by test_e2e_training.py (and killed and resumed by test_faults_training.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import cli
from trainer import config as config_lib
from trainer import input_pipeline, train


@pytest.fixture(scope="module")
def builder(small_data_dir):
    return input_pipeline.load_builder(small_data_dir, 8)


def test_the_plan_follows_the_config_and_the_splits(builder):
    config = {**config_lib.DEFAULTS, "size": 8, "batch_size": 32, "epochs": 3, "steps_per_epoch": None,
              "validation_steps": None}  # fmt: skip
    plan = train.plan_run(builder, config)
    assert (plan.epochs, plan.steps_per_epoch, plan.validation_steps, plan.num_train) == (3, 32, 8, 1024)
    assert plan.total_steps == 96
    assert train.plan_run(builder, {**config, "steps_per_epoch": 5, "validation_steps": 50}).validation_steps == 8


def test_a_batch_larger_than_a_split_is_refused(builder):
    config = {**config_lib.DEFAULTS, "size": 8}
    with pytest.raises(cli.UsageError, match="batch_size 2048 is larger than the 1024 training examples"):
        train.plan_run(builder, {**config, "batch_size": 2048})
    with pytest.raises(cli.UsageError, match="larger than the validation split"):
        train.plan_run(builder, {**config, "batch_size": 512})


def test_a_weights_fingerprint_changes_with_any_weight():
    import numpy as np

    weights = [np.zeros((2, 2), np.float32), np.ones(3, np.float32)]
    same = [array.copy() for array in weights]
    assert train.weights_fingerprint(weights) == train.weights_fingerprint(same)
    same[1][2] = np.nextafter(np.float32(1), np.float32(2))
    assert train.weights_fingerprint(weights) != train.weights_fingerprint(same)


def test_a_checkpoint_is_written_once_a_position_and_not_before_the_first_step(builder, tmp_path):
    from trainer import checkpoints, distribution, outputs, preemption

    config = {**config_lib.DEFAULTS, "size": 8, "batch_size": 32, "epochs": 2, "steps_per_epoch": 4}
    loop = train.Loop(config, builder, distribution.make_strategy(config, None), train.plan_run(builder, config),
                      outputs.output_paths(str(tmp_path / "model")), team=train.Team(),
                      stop=preemption.StopRequest("test"), log=lambda message: None)  # fmt: skip
    state = tmp_path / "model" / "checkpoints" / "state"
    loop.save(checkpoints.Position(0))  # nothing learnt yet
    assert not state.exists() or not list(state.iterdir())
    loop.save(checkpoints.Position(2))
    (written,) = state.iterdir()
    before = {path: path.stat().st_mtime_ns for path in written.iterdir()}
    loop.save(checkpoints.Position(2))  # the same position again: nothing rewritten
    assert list(state.iterdir()) == [written]
    assert {path: path.stat().st_mtime_ns for path in written.iterdir()} == before


def test_a_batch_digest_depends_on_its_examples_not_on_their_order_or_how_replicas_share_them():
    paths = np.random.default_rng(0).integers(0, 8, [16, 8, 2]).astype(np.uint8)
    labels = np.arange(16, dtype=np.float32) % 2

    def digest(*parts):
        sums = sum(train.replica_digest(paths[part], labels[part]).numpy() for part in parts)
        return train.describe_digest(sums)

    whole = digest(slice(0, 16))
    assert whole.startswith("16 examples, digest ")
    assert digest(slice(8, 16), slice(0, 8)) == whole  # two replicas
    assert digest(np.arange(16)[::-1]) == whole  # another order
    assert digest(np.r_[0:15, 0]) != whole  # another example
