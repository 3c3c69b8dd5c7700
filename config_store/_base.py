"""Where ``ConfigStore`` lived when it was an abstract base filled in by each backend.

Kept only so that ``_cli.py`` (``from ._base import ConfigStore``) imports unchanged; new code
imports from ``._store``. Remove once ``_cli.py`` does.
"""

from __future__ import annotations

from ._store import ConfigStore

__all__ = ["ConfigStore"]
