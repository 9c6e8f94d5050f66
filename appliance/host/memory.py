"""Process-wide memory settings made before the daemon starts its threads."""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8        # mallopt(3)


def one_malloc_arena() -> bool:
    """glibc gives every thread that allocates its own malloc arena and keeps what it freed there: the voice worker's
    numpy buffers cost tens of MB of resident memory in a second arena. One arena for all threads keeps them in the
    main one (the threads allocate little, and rarely at once). Called before any thread starts; False where the C
    library has no mallopt (musl)."""
    try:
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False
