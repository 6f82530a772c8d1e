"""Runnable benchmark scripts for Motet (not tests); see benchmarks/README.md."""
