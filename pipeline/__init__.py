"""Moving-line data: the sequence generator, the Beam/TFDS builder and its commands."""
