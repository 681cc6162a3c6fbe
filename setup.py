"""moving-line: moving-line videos as a Beam-built TFDS dataset, and a CNN-LSTM trainer."""

from pathlib import Path

from setuptools import find_packages, setup

BEAM = "apache-beam>=2.77,<3"
TENSORFLOW = "tensorflow>=2.21,<2.22"

setup(
    name="moving-line",
    version="0.1.0",
    description="Generate moving-line videos with Apache Beam as a TFDS dataset; train a CNN-LSTM on them.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["pipeline", "pipeline.*", "trainer", "trainer.*"]),
    # The dataset card travels with the builder (sdists for Dataflow workers included).
    package_data={"pipeline.moving_line": ["README.md", "CITATIONS.bib", "TAGS.txt"]},
    include_package_data=True,
    install_requires=[
        TENSORFLOW,
        BEAM,
        "tensorflow-datasets>=4.9.10,<4.10",
        "numpy>=1.26,<3",
        "pyyaml>=6",
        "tensorboard>=2.21,<2.22",  # TensorFlow 2.21 does not install it; the trainer writes logs for it
        "matplotlib>=3.8",
        "pillow>=10",
        # tensorflow-datasets uses these without declaring them.
        "importlib_resources>=6",
        "mlcroissant>=1.0",  # the `tfds` command line
        "array_record>=0.8",  # the ArrayRecord files (tfds.data_source reads them)
        "google-crc32c>=1.5",  # the TFRecord files' checksums, written without TensorFlow
    ],
    extras_require={
        "gcp": [f"{BEAM.replace('apache-beam', 'apache-beam[gcp]')}"],
        # Beam's DaskRunner: pipeline.generate --runner=DaskRunner on a Dask cluster (dask, distributed).
        "dask": [f"{BEAM.replace('apache-beam', 'apache-beam[dask]')}"],
        "and-cuda": [TENSORFLOW.replace("tensorflow", "tensorflow[and-cuda]")],
        # Ray Train: python -m trainer.ray_job trains on a Ray cluster (trainer/ray_job.py). Its 'train' extra
        # brings what ray.train imports (pandas, pyarrow, fsspec, pydantic, ...); Ray also needs jsonschema and
        # msgpack, its normal dependencies.
        "ray": ["ray[train]>=2.60,<2.61"],
        # grain and torch: the tests read the ArrayRecord files as JAX and PyTorch users would. torch 2.13.0 is the
        # CPU build; an unpinned torch would pull a CUDA build of several GB.
        "test": [
            # pytest 9.2 silently stops xdist's --dist loadgroup from grouping (pytest-xdist issue 1386): each
            # xdist_group's module fixtures would be built on every worker (tests/test_xdist_groups.py).
            "pytest>=8,<9.2",
            # The suite on every core (make test), each session fixture built once (filelock), line coverage
            # of processes the tests start (coverage's patch = subprocess, from 7.10).
            "pytest-xdist>=3.5",
            "filelock>=3.12",
            "coverage>=7.10",
            "dill>=0.3",
            "hypothesis>=6.100",
            "scipy>=1.11",
            "ruff>=0.6",
            "build>=1.2",
            "grain>=0.2.18",
            "torch==2.13.0",
        ],
    },
)
