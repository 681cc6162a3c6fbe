"""The moving_line TFDS dataset (`tfds build pipeline/moving_line`)."""

from pipeline.moving_line.moving_line_dataset_builder import Builder, MovingLineConfig

__all__ = ["Builder", "MovingLineConfig"]
