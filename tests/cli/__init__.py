"""Tests of the motet command line and its interactive shell."""
