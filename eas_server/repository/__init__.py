"""Many model versions in one eas-server instance: Triton's repository layout on disk, the table
of hosted versions (load, swap, unload while the others serve) and the instance's HTTP routes,
including Triton's repository extension (``/v2/repository/index``, ``.../models/{m}/load``,
``.../unload``) and ``/v2/resources`` for placement."""

from ._app import RepositoryApp
from ._host import Hosted, LoadFailed, ModelHost, ModelState
from ._layout import LayoutError, ModelSource, list_models, resolve

__all__ = [
    "Hosted",
    "LayoutError",
    "LoadFailed",
    "ModelHost",
    "ModelSource",
    "ModelState",
    "RepositoryApp",
    "list_models",
    "resolve",
]
