"""What the project takes from its libraries outside their public APIs stays in pipeline/library_gaps.py, and
is still there in the installed releases."""

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
