"""What the project takes from its libraries outside their public APIs stays in pipeline/library_gaps.py, and
is still there in the installed releases."""

import os
import pathlib
import re

import pytest
from conftest import REPO

# Private modules, patched library classes and C calls that an upgrade of Beam, TFDS or TensorFlow breaks.
PRIVATE = re.compile(
    r"__defaults__|sys\.modules(\.setdefault|\[[^]]*\] *=)|ctypes|tensorflow\.python|_BeamArgumentParser|"
    r"_add_argparse_args|\._actions|statesampler|sdk_worker_main|_make_download_manager|_fully_qualified_class_name|"
    r"lazy_imports_utils|core\.registered\.|initialize_from_bucket *=|shard_utils|_get_filename_template"
)


def test_no_module_reaches_into_a_librarys_private_parts():
    found = []
    for folder in ("pipeline", "trainer", "bench"):
        for path in sorted(pathlib.Path(REPO, folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if PRIVATE.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_tfds_still_has_the_builder_base_that_it_does_not_export():
    try:
        from pipeline import library_gaps
    except ImportError as error:
        pytest.fail(
            f"TFDS moved or removed FileReaderBuilder ({error}); pipeline/library_gaps.py says why the builder needs "
            "it: base the builder on what replaced it"
        )
    import tensorflow_datasets as tfds

    assert issubclass(tfds.core.ShardBasedBuilder, library_gaps.FileReaderBuilder), (
        "TFDS's FileReaderBuilder is no longer the base of its file-reading builders; see pipeline/library_gaps.py"
    )


def python_sources():
    from conftest import REPO

    for folder in ("pipeline", "trainer", "bench", "scripts"):
        for parent, _, names in os.walk(os.path.join(REPO, folder)):
            for name in names:
                if name.endswith(".py"):
                    with open(os.path.join(parent, name), encoding="utf-8") as file:
                        yield file.name, file.read()


def test_no_user_file_is_read_with_an_unsafe_loader():
    for path, source in python_sources():
        assert not re.search(r"\bpickle\b|\bdill\b|\bmarshal\b|allow_pickle\s*=\s*True", source), path
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", source), path
        for call in re.findall(r"load_model\([^)]*\)", source):
            assert "safe_mode=True" in call, f"{path}: {call}"
