"""The wire: the line protocol's schemas (``protocol``), its newline framing
(``framing``), the TCP server (``server``), the trio client (``client``) and
the blocking client for code without trio (``blocking``). The clients import
nothing of the actor runtime, the stores or Prometheus' client; the error
classes and their codes come from :mod:`motet.storage.errors`."""
