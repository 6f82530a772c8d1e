"""Erasing a data subject's personal data (crypto-shredding); see
:meth:`Engine.forget <motet.engine.core.Engine.forget>` and
:mod:`motet.storage.personal`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from motet.actors.errors import EngineClosed, Unavailable
from motet.actors.projection import ProjectionFailed
from motet.actors.request import CommandRequest
from motet.storage.errors import Conflict
from motet.storage.keyring import MODELS_KEY
from motet.storage.personal import Forgotten, SubjectForgotten, check_subject, subject_stream
from motet.storage.records import Append

if TYPE_CHECKING:
    from .core import Engine

__all__ = ["Forgotten", "forget"]

log = logging.getLogger("motet.engine")

_ATTEMPTS = 3
"""Appends of the SubjectForgotten event tried before giving up on conflicts
(only another node forgetting the same subject at the same time causes one)."""


class _Owner:
    """The owner of a forget's append: no actor to tell."""

    def append_settled(self, ok: bool) -> None:
        pass


async def forget(engine: Engine, subject: str, *, timeout: float = 10.0) -> Forgotten:
    """See :meth:`Engine.forget`."""
    check_subject(subject)
    if not timeout >= 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    engine._check_open()
    if engine._closing:
        raise EngineClosed("the engine is closing and forgets no more subjects")
    if engine.role == "reader":
        raise Unavailable(
            "this engine has the role 'reader' and cannot forget subjects: "
            "ask the 'writer' of its store"
        )
    codec = engine.codec
    calls = engine._calls
    stream = subject_stream(subject)
    event = codec.encode_event(SubjectForgotten(subject=subject))
    for attempt in range(_ATTEMPTS):
        version = await calls.run(engine.store.stream_version, stream)
        had_key = await calls.run(engine.store.get_key, subject) is not None
        request = CommandRequest(None)
        # Outside the lease fence: no actor holds a Subject stream, and the
        # expected version (re-read on a conflict) keeps the record single.
        request.append = Append(stream, version, [event], fenced=False)
        request.owner = _Owner()
        engine.writer.submit(request)
        await request.wait_done()
        if isinstance(request.error, Conflict) and attempt + 1 < _ATTEMPTS:
            continue
        if request.error is not None:
            raise request.error
        break
    ack = request.ack
    assert ack is not None
    reloaded = engine.registry.forget_subject(subject)
    log.info(
        "forgot subject %r at position %d (key deleted: %s, actors reloaded: %d)",
        subject,
        ack.position,
        had_key,
        reloaded,
    )
    if codec.has_personal:
        await _reseal_read_models(engine, ack.position, timeout)
    return Forgotten(
        subject=subject,
        stream=stream,
        position=ack.position,
        key_deleted=had_key,
        already_forgotten=not had_key and version > 0,
    )


async def _reseal_read_models(engine: Engine, position: int, timeout: float) -> None:
    """Saved read models may hold the subject in clear (sealed under the
    read-model key): replace that key, then save every model that has
    applied the erasure under the new one. A model still behind keeps its
    old checkpoint, now unreadable, and is rebuilt on restart."""
    codec = engine.codec
    # No model from before the erasure may be saved from now on.
    codec.keyring.models_from = max(codec.keyring.models_from, position)
    projections = [p for p in engine.projections.values() if p.definition.dump is not None]
    if not projections or not any(p.checkpoints for p in projections):
        return
    with trio.move_on_after(timeout):
        for projection in projections:
            try:
                await projection.wait_for(position)
            except ProjectionFailed as exc:  # its old model goes unreadable
                log.warning("projection %s did not apply the erasure: %s", projection.name, exc)
    writer = engine.writer
    if await trio.to_thread.run_sync(engine.store.get_key, MODELS_KEY, limiter=writer.limiter):
        await trio.to_thread.run_sync(codec.rotate_models_key, limiter=writer.limiter)
    for projection in projections:
        if projection.position >= position:
            await projection.save(force=True)
