"""TFDS's own builder test: build a tiny config with Beam, load it back, check exact split sizes."""

import os

import tensorflow_datasets as tfds

from pipeline.moving_line import moving_line_dataset_builder as dataset_builder


class MovingLineBuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = dataset_builder.Builder
    # A custom size (predefined names cannot be reused) with tiny exact counts.
    BUILDER_CONFIG_NAMES_TO_TEST = [dataset_builder.make_config(size=5, num_train=12, num_validation=4, num_test=6)]
    SPLITS = {"train": 12, "validation": 4, "test": 6}
    SKIP_CHECKSUMS = True  # nothing is downloaded
    # The test case wants a folder of fake downloads; nothing is downloaded, so any folder does (none made in /tmp).
    EXAMPLE_DIR = os.path.dirname(__file__)
