"""The wire: the line protocol's schemas and error codes, the TCP server and
the Python clients. The clients import nothing of the actor runtime or the
stores."""
