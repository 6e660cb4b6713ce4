"""The update-rule registry; names are exactly the CLI's ``--optimizer`` values."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zoattack.registry import Registry

if TYPE_CHECKING:
    from zoattack.optim.base import ZORule

OPTIMIZERS: Registry[ZORule] = Registry("optimizer")
