"""Job defaults the command line shows in its help, in a module without torch (see
zoattack/cli/_common.py on import cost)."""

from __future__ import annotations

# Images per resumable chunk: what a crash or Ctrl-C can lose at most.
DEFAULT_CHUNK = 500
