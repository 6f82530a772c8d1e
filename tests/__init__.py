"""Motet's test suite: a folder per layer, shared helpers in :mod:`tests.support`.

Every folder is a package, so test modules are named by their path
(``tests.net.test_server``) and two files with one basename never clash.
"""
