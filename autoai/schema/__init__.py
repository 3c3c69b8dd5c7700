"""The control plane's documents as frozen pydantic models: one contract for the REST API, the
services, the reconciler, ``blade_aspect`` and the SDK (docs/schema.md lists every field).
"""

from . import _base, _deploy, _models, _pools, _routes
from ._base import *
from ._deploy import *
from ._models import *
from ._pools import *
from ._routes import *

__all__ = [
    *_base.__all__,
    *_routes.__all__,
    *_deploy.__all__,
    *_models.__all__,
    *_pools.__all__,
]
