"""Tests of the example app and of the README's examples."""
