"""Counting XLA compilations, for tests that a second call with new arrays of the same shapes reuses a program."""

import contextlib

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compiles():
    """Yields a list that holds one duration per program XLA compiled inside the block."""
    durations = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            durations.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield durations
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
