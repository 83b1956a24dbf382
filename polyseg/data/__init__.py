"""The data layer: on-disk layouts, datasets and their splits, synthetic data, batching, TFDS,
video decoding. It imports nothing above it: no engine, no report, no method."""
