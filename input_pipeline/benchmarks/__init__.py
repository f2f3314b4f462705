"""Benchmarks of the input pipeline."""
