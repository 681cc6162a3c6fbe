"""What this project takes from its libraries that they do not export publicly: one place, with why.

Everything else uses the libraries' public APIs. When an upgrade moves or removes what is here,
tests/test_library_gaps.py fails with a message naming it.

- TFDS's FileReaderBuilder: the base that GeneratorBasedBuilder and ShardBasedBuilder share (a
  builder whose data is files it reads, with no writer of its own). The moving_line builder
  writes its shards itself, with one Beam job (pipeline/transforms.py), and describes them
  through TFDS's documented extension points (_info, _download_and_prepare) and public types
  (SplitInfo, SplitDict). tfds.core exports only the two subclasses, each of which brings a writer and
  abstract methods this builder has no use for.
"""

from tensorflow_datasets.core.dataset_builder import FileReaderBuilder

__all__ = ["FileReaderBuilder"]
