"""The SavedModel: a `video` uint8 input, probability and class name out, loadable with TensorFlow alone."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import QUICK_TRAIN, run_command, run_in_process, snapshot

from pipeline import generator
from trainer import export
from trainer import model as model_lib

SIZE = 8

# Runs in a fresh interpreter that imports TensorFlow and nothing of this package.
LOAD_WITHOUT_PROJECT = """
import json, sys
import numpy as np
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
outputs = serve(video=tf.constant(np.load(sys.argv[2])))
spec = serve.structured_input_signature[1]
print(json.dumps({
    "inputs": {name: [s.dtype.name, s.shape.as_list()] for name, s in spec.items()},
    "outputs": {name: [t.dtype.name, t.shape.as_list()] for name, t in outputs.items()},
    "probability_right": outputs["probability_right"].numpy().tolist(),
    "class_name": [name.decode() for name in outputs["class_name"].numpy()],
    "project_imported": sorted(m for m in sys.modules if m.split(".")[0] in ("pipeline", "trainer", "bench")),
}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A size-8 model trained for a moment (so that it tells the classes apart), exported both ways."""
    import keras

    folder = tmp_path_factory.mktemp("export")
    keras.utils.set_random_seed(0)  # the same model every time: one that tells the classes apart
    keras_model = model_lib.compile_model(model_lib.build_model(SIZE), learning_rate=0.01)
    train = generator.generate(0, "train", 0, 512, SIZE)
    keras_model.fit(train["video"], train["label"], batch_size=32, epochs=2, verbose=0)
    export_dir = export.export_saved_model(keras_model, str(folder / "export"), ["left", "right"], str(folder))
    keras_path = export.save_keras(keras_model, str(folder / "model.keras"))
    videos = generator.generate(11, "test", 0, 16, SIZE)["video"]
    np.save(folder / "videos.npy", videos)
    return {
        "model": keras_model,
        "export_dir": export_dir,
        "keras_path": keras_path,
        "videos": videos,
        "folder": folder,
    }


@pytest.mark.slow
def test_the_saved_model_loads_without_this_package_and_predicts_what_keras_predicts(exported):
    result = run_command("-c", LOAD_WITHOUT_PROJECT, exported["export_dir"], str(exported["folder"] / "videos.npy"))
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["project_imported"] == []
    assert loaded["inputs"] == {"video": ["uint8", [None, SIZE, SIZE, SIZE, 1]]}
    assert loaded["outputs"]["probability_right"] == ["float32", [16]]
    assert loaded["outputs"]["class_name"] == ["string", [16]]
    expected = exported["model"].predict(exported["videos"], verbose=0).reshape(-1)
    assert 0.05 < np.mean(expected > 0.5) < 0.95, "the model should predict both classes"
    np.testing.assert_allclose(loaded["probability_right"], expected, atol=1e-6)
    assert loaded["class_name"] == ["right" if p > 0.5 else "left" for p in expected]


def test_predict_prints_for_each_video_the_saved_models_probability_and_class(exported, tmp_path, capfd):
    """trainer.predict's lines come from the model: each line's probability is the SavedModel's for that video, its
    class follows the probability, and a model that learnt the task predicts what is expected on most lines."""
    made = generator.generate(12, "test", 0, 64, SIZE)
    np.savez(tmp_path / "videos.npz", video=made["video"], label=made["label"])
    arguments = [f"--model={exported['export_dir']}", f"--input={tmp_path / 'videos.npz'}"]
    result = run_in_process("trainer.predict", arguments, capfd)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    serve = tf.saved_model.load(exported["export_dir"]).signatures["serving_default"]
    expected = serve(video=tf.constant(made["video"]))["probability_right"].numpy()
    printed = []
    for line, label, probability in zip(lines, made["label"], expected, strict=True):
        found = re.fullmatch(
            r"Expected: (Left|Right), Predicted: (Left|Right)  \(probability of right ([\d.]+)\)", line
        )
        assert found, line
        assert found.group(1) == ("Left", "Right")[label]
        assert found.group(2) == ("Right" if probability > 0.5 else "Left"), line
        assert float(found.group(3)) == pytest.approx(probability, abs=5e-5), line
        printed.append(found.group(1) == found.group(2))
    assert np.mean(printed) >= 0.8, f"{np.mean(printed):.0%} of the predictions are what is expected"
    assert f"[trainer.predict] {sum(printed)}/64 correct" in result.stderr


def test_the_serving_function_eagerly_and_in_a_dataset_map(exported):
    serve = export.serving_function(exported["model"], ["left", "right"])
    videos = tf.constant(exported["videos"][:4])
    eager = serve(videos)
    assert eager["probability_right"].dtype == tf.float32 and eager["probability_right"].shape == (4,)
    assert eager["class_id"].dtype == tf.int64
    mapped = next(iter(tf.data.Dataset.from_tensors(videos).map(serve)))
    np.testing.assert_allclose(mapped["probability_right"], eager["probability_right"], atol=1e-6)
    np.testing.assert_array_equal(mapped["class_name"], eager["class_name"])
    np.testing.assert_array_equal(
        eager["class_name"], np.where(eager["class_id"].numpy() == 1, b"right", b"left").astype(object)
    )


# Plain Keras in a fresh interpreter: nothing of this package imported, nothing registered.
LOAD_KERAS_WITHOUT_PROJECT = """
import json, sys
import keras
import numpy as np
model = keras.saving.load_model(sys.argv[1])
print(json.dumps({
    "probability_right": model.predict(np.load(sys.argv[2]), verbose=0).reshape(-1).tolist(),
    "layers": [type(layer).__module__.split(".")[0] for layer in model.layers],
    "parameters": model.count_params(),
    "project_imported": sorted(m for m in sys.modules if m.split(".")[0] in ("pipeline", "trainer", "bench")),
}))
"""


@pytest.mark.slow
def test_the_keras_file_loads_in_plain_keras_and_predicts_what_the_saved_model_predicts(exported):
    result = run_command(
        "-c", LOAD_KERAS_WITHOUT_PROJECT, exported["keras_path"], str(exported["folder"] / "videos.npy")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["project_imported"] == []
    assert set(loaded["layers"]) == {"keras"}
    assert loaded["parameters"] == exported["model"].count_params()
    serve = tf.saved_model.load(exported["export_dir"]).signatures["serving_default"]
    np.testing.assert_allclose(
        loaded["probability_right"],
        serve(video=tf.constant(exported["videos"]))["probability_right"].numpy(),
        atol=1e-6,
    )


def test_the_time_distributed_form_holds_build_models_weights_in_the_same_order():
    folded = model_lib.build_model(SIZE)
    tutorial = model_lib.build_time_distributed_model(SIZE)
    assert [w.shape for w in folded.weights] == [w.shape for w in tutorial.weights]
    tutorial.set_weights(folded.get_weights())
    videos = generator.generate(5, "test", 0, 4, SIZE)["video"]
    np.testing.assert_allclose(tutorial.predict(videos, verbose=0), folded.predict(videos, verbose=0), atol=1e-6)


def test_exporting_again_replaces_the_export_and_leaves_no_partial_folder(exported):
    folder = exported["folder"]
    export.export_saved_model(exported["model"], str(folder / "export"), ["left", "right"], str(folder))
    export.save_keras(exported["model"], str(folder / "model.keras"))
    assert sorted(path.name for path in folder.iterdir()) == ["export", "model.keras", "videos.npy"]


# Calls the SavedModel with only TensorFlow imported, two ways: its serving signature (what TF Serving and
# Vertex AI call, by keyword) and its endpoint function (a tf.function, called by position). One JSON line
# per case: the error TensorFlow gave.
CALL_SAVED_MODEL = """
import json, sys
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
ways = {"signature": loaded.signatures["serving_default"], "function": loaded.serving_default}
wrong = {
    "float32 video": tf.zeros([1, 8, 8, 8, 1], tf.float32),
    "frame size 9": tf.zeros([1, 9, 9, 9, 1], tf.uint8),
    "no batch axis": tf.zeros([8, 8, 8, 1], tf.uint8),
}
for way, serve in ways.items():
    calls = {name: (lambda video=video: serve(video=video) if way == "signature" else serve(video))
             for name, video in wrong.items()}
    if way == "signature":
        calls["input misnamed"] = lambda: serve(videos=tf.zeros([1, 8, 8, 8, 1], tf.uint8))
    for name, call in calls.items():
        try:
            call()
            error = None
        except Exception as caught:
            error = f"{type(caught).__name__}: {caught}"[:1000]
        print(json.dumps({"case": f"{way}: {name}", "error": error}))
print(json.dumps({"project_imported": sorted(m for m in sys.modules if m.split(".")[0] in ("pipeline", "trainer"))}))
"""


SAVED_MODEL_CASES = [
    *(f"signature: {name}" for name in ["float32 video", "frame size 9", "no batch axis", "input misnamed"]),
    *(f"function: {name}" for name in ["float32 video", "frame size 9", "no batch axis"]),
]


@pytest.fixture(scope="module")
def saved_model_errors(exported):
    result = run_command("-c", CALL_SAVED_MODEL, exported["export_dir"], check=True)
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert lines[-1] == {"project_imported": []}
    return {line["case"]: line["error"] for line in lines[:-1]}


@pytest.mark.slow
@pytest.mark.parametrize("case", SAVED_MODEL_CASES)
def test_the_saved_model_refuses_a_wrong_input_with_a_clear_error(saved_model_errors, case):
    error = saved_model_errors[case]
    assert error is not None, f"{case} was accepted"
    if case.startswith("function"):
        # The tf.function names the input, what it got and what it takes.
        assert "dtype=tf.uint8, name='video')" in error and "Can not cast TensorSpec" in error, error
    elif case == "signature: float32 video":
        # A signature checks the dtype only when it runs, and TensorFlow then names the input by position
        # (input #0 is video, the only one): the one wrong input TensorFlow does not name.
        assert "input #0(zero-based) was expected to be a uint8 tensor but is a float tensor" in error, error
    elif case == "signature: input misnamed":
        assert "missing a required argument: 'video'" in error, error
    else:
        assert "Shape of tensor video [" in error, error
        assert "is not compatible with expected shape [?,8,8,8,1]" in error, error


def test_a_keras_file_holding_python_code_is_refused(tmp_path):
    import keras

    inputs = keras.Input([2])
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="safe_mode"):
        export.load_keras(str(tmp_path / "lambda.keras"))


def marked(folder) -> dict:
    return json.loads((folder / export.MARK).read_text())


@pytest.mark.slow
def test_an_export_replaces_an_earlier_export_of_its_run_and_nothing_else(quick_model_dir, tmp_path, capfd):
    model, other = tmp_path / "model", tmp_path / "other"
    shutil.copytree(quick_model_dir, model)
    shutil.copytree(quick_model_dir, other)
    target = tmp_path / "exported"
    command = [f"--model_dir={model}", f"--export_dir={target}"]
    assert run_in_process("trainer.export", command, capfd).returncode == 0
    assert marked(target)["model_dir"] == str(model.resolve()) and "saved_model.pb" in marked(target)["files"]
    # What an export killed midway leaves (SavedModel files and the mark, no list of files yet) is replaced too.
    shutil.copytree(target, tmp_path / "exported.partial")
    (tmp_path / "exported.partial" / export.MARK).write_text(json.dumps({**marked(target), "files": None}))
    again = run_in_process("trainer.export", command, capfd)
    assert again.returncode == 0, again.stderr
    assert sorted(os.listdir(tmp_path)) == ["exported", "model", "other"]

    # A file of the user's inside the export, the export of another run, a partial folder that is not one.
    (target / "variables" / "notes.txt").write_text("mine")
    (tmp_path / "fresh.partial").mkdir()
    (tmp_path / "fresh.partial" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    for arguments, message in [
        (command, f"--export_dir {target} holds variables/notes.txt, which no export of this run wrote"),
        ([f"--model_dir={other}", f"--export_dir={target}"],
         f"--export_dir {target} holds the export of another --model_dir ({model.resolve()})"),
        ([f"--model_dir={model}", f"--export_dir={tmp_path / 'fresh'}"],
         f"--export_dir {tmp_path / 'fresh.partial'} holds notes.txt, which"),
    ]:  # fmt: skip
        refused = run_in_process("trainer.export", arguments, capfd)
        assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
            f"trainer.export: error: {refused.stderr.split('error: ', 1)[1].strip()}"
        ], refused.stderr
        assert message in refused.stderr, refused.stderr
    assert snapshot(tmp_path) == before


def test_a_run_whose_export_folder_holds_a_users_file_is_refused_before_it_trains(
    quick_model_dir, small_data_dir, tmp_path, capfd
):
    model = tmp_path / "model"
    shutil.copytree(quick_model_dir, model, ignore=shutil.ignore_patterns("export"))
    (model / "export").mkdir()
    (model / "export" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    refused = run_in_process("trainer.task", [*QUICK_TRAIN, f"--data_dir={small_data_dir}", f"--model_dir={model}"],
                             capfd)  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip() == (
        f"trainer.task: error: {model / 'export'} holds notes.txt, which no export of this run wrote; the run ends by "
        "writing its SavedModel there: move those files away, or give another --model_dir"
    )
    assert snapshot(tmp_path) == before
