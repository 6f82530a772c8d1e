"""Tests of the network layer: the protocol server and its clients."""
