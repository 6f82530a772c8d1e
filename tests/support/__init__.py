"""Helpers shared by the tests of several layers.

- :mod:`tests.support.commands`: example-app commands, as structs and as
  protocol requests.
- :mod:`tests.support.folds`: the example's user state, folded by hand.
- :mod:`tests.support.logs`: the whole event log of a store.
- :mod:`tests.support.paths`: the checkout's root.
- :mod:`tests.support.peer`: a raw protocol connection (:class:`Peer`, :func:`open_peer`).
- :mod:`tests.support.ports`: a free TCP port of 127.0.0.1.

The modules are imported by name (``from tests.support.peer import Peer``);
this package face imports nothing, so a test pulls in only what it uses.
"""
