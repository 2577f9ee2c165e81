"""Benchmarks run by ``tools/benchmark.py``: each figure is a ratio against a named baseline
measured in the same run on the same inputs."""
