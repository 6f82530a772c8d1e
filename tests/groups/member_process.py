"""A consumer-group member process for the crash tests: joins a group on a
``motet serve`` with the blocking client and logs, one flushed line each,
when it starts and finishes handling each event (``S``/``A``, position,
stream, version, wall-clock time).

    python -m tests.groups.member_process PORT GROUP LOG [WORK_SECONDS]
"""

from __future__ import annotations

import sys
import time

from motet.engine.net.blocking import connect


def main(port: int, group: str, log_path: str, work: float) -> None:
    with (
        open(log_path, "a", buffering=1) as log,
        connect("127.0.0.1", port) as client,
        client.consume(group, category="User", types=["OrderPlaced"], prefetch=20) as events,
    ):
        print("joined", flush=True)
        for event in events:
            log.write(f"S {event.position} {event.stream} {event.version} {time.time()!r}\n")
            time.sleep(work)
            log.write(f"E {event.position} {event.stream} {event.version} {time.time()!r}\n")
            event.ack()
            log.write(f"A {event.position} {event.stream} {event.version} {time.time()!r}\n")


if __name__ == "__main__":
    main(
        int(sys.argv[1]),
        sys.argv[2],
        sys.argv[3],
        float(sys.argv[4]) if len(sys.argv) > 4 else 0.001,
    )
