"""Tests of the motet executable as a user runs it: subprocesses, SIGKILL, Prometheus."""
