"""Benchmarks: `python -m bench` (bench/run.py) compares the hub with a bare gRPC baseline."""
