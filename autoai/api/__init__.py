"""The control plane's REST API (FastAPI): ``create_app(settings)``.

uvicorn --factory autoai.api:create_app --host 127.0.0.1 --port 8080
"""

from ._app import STATUS, create_app
from ._settings import ControlSettings
from .dependencies import Services

__all__ = ["STATUS", "ControlSettings", "Services", "create_app"]
