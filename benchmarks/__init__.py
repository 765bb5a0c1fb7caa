"""Reproducible speed, accuracy, NPU-pipeline and footprint benchmarks (see benchmarks/README.md)."""
