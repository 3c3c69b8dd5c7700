"""Settings of eas-server: defaults < EAS service JSON (--config) < ``EAS_`` environment < flags.

The service JSON is EAS's (``name``, ``processor``, ``model_path``, ``token``,
``metadata.instance``, ``metadata.rpc.batching``, ``metadata.rpc.max_batch_size``,
``metadata.rpc.max_batch_timeout`` (ms), ``metadata.rpc.max_queue_size``,
``metadata.rpc.worker_threads`` / ``metadata.workers``, ``metadata.rpc.grpc_port``,
``metadata.padding``); ``metadata`` keys may be nested (``{"rpc": {"batching": true}}``) or
dotted (``{"rpc.batching": true}``).
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ._network import is_loopback
from .processors._padding import PaddingChoice

__all__ = ["PER_MODEL_FIELDS", "ServerSettings", "load_service_json", "service_fields"]

log = logging.getLogger("eas_server.settings")
_SERVICE_JSON: ContextVar[dict[str, Any] | None] = ContextVar("_SERVICE_JSON", default=None)

# metadata key (after flattening) -> settings field
_METADATA_KEYS = {
    "rpc.batching": "batching",
    "rpc.max_batch_size": "max_batch_size",
    "rpc.batching.max_batch_size": "max_batch_size",
    "batching.max_batch_size": "max_batch_size",
    "rpc.max_batch_timeout": "max_batch_timeout_ms",
    "rpc.batching.max_batch_timeout": "max_batch_timeout_ms",
    "batching.max_batch_timeout": "max_batch_timeout_ms",
    "rpc.max_queue_size": "max_queue_size",
    "rpc.worker_threads": "workers",
    "worker_threads": "workers",
    "workers": "workers",
    "rpc.frontends": "frontends",
    "frontends": "frontends",
    "intra_op_threads": "intra_op_threads",
    "padding": "padding",  # an object (a declaration) or false: a leaf, not flattened
    "rpc.grpc_port": "grpc_port",
}
_TOP_KEYS = {
    "name": "name",
    "processor": "processor",
    "model_path": "model",
    "token": "token",
    "version": "version",
    "model_repository": "model_repository",
    "service": "service",
    "weight": "weight",
}
# Known EAS keys that concern the control plane (instances, resources), not one server process.
_IGNORED_METADATA = {"instance", "cpu", "memory", "gpu", "region", "resource", "rpc.keepalive"}


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and not (prefix and prefix in _METADATA_KEYS):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        out[prefix] = value


def load_service_json(path: str | Path) -> dict[str, Any]:
    """Read an EAS service JSON into settings fields.

    Raises:
        ValueError: unreadable file, invalid JSON, or not an object (the message says which).
    """
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read service config {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"service config {path} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ValueError(f"service config {path} is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError(f"service config {path} must be a JSON object")
    return service_fields(doc, f"service config {path}")


def service_fields(doc: dict[str, Any], where: str = "service config") -> dict[str, Any]:
    """An EAS service JSON document (already parsed) as settings fields; ``where`` names it in
    errors.

    Raises:
        ValueError: ``metadata`` is not an object, or is nested too deeply.
    """
    path = where
    values: dict[str, Any] = {field: doc[key] for key, field in _TOP_KEYS.items() if key in doc}
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: metadata must be an object")
    flat: dict[str, Any] = {}
    try:
        _flatten("", metadata, flat)
    except RecursionError:
        raise ValueError(f"{path}: metadata is nested too deeply") from None
    for key, value in flat.items():
        if key in _METADATA_KEYS:
            values[_METADATA_KEYS[key]] = value
        elif key not in _IGNORED_METADATA:
            log.warning("%s: ignoring metadata.%s", path, key)
    return values


class _ServiceJsonSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_SERVICE_JSON.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_SERVICE_JSON.get() or {})


class ServerSettings(BaseSettings):
    """Everything eas-server can be told (flags, ``EAS_*`` variables, service JSON)."""

    model_config = SettingsConfigDict(env_prefix="EAS_", frozen=True, extra="forbid")

    model: str = ""
    """Path of the model (an .onnx file, or a blade artifact directory); needed unless
    ``model_repository`` is given."""
    name: str = ""
    """Model name clients address (``/v2/models/{name}``); needed with ``model``."""
    model_repository: str | None = None
    """Serve every model of this directory (Triton's layout ``DIR/{name}/{version}/model.onnx``
    or a blade artifact there, an optional service JSON ``DIR/{name}/config.json``), and load
    and unload models through the repository API; ``model`` may be served beside them."""
    version: str = "1"
    """Model version served."""
    processor: str = "onnx"
    """Processor (runtime) serving the model: ``onnx``, ``pipeline``, ``blade`` or one installed
    through the ``autoai.processors`` entry points; a ``model`` that is a bundle (a directory
    holding ``pipeline.json``) defaults to ``pipeline``."""
    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = Field(0, ge=0, le=65535)
    """Port to bind; 0 picks a free one (printed on start)."""
    grpc_port: int | None = Field(None, ge=0, le=65535)
    """Port of the KServe v2 gRPC front end on ``host``; 0 picks a free one (printed on start as
    ``grpc listening on HOST:PORT``); None (the default): no gRPC (EAS ``rpc.grpc_port``)."""
    store: str | None = None
    """Config store URL; when set, the instance registers there once ready."""
    service: str | None = None
    """Service name to register under (default ``{name}-{version}``)."""
    weight: int = Field(100, ge=0)
    """Routing weight announced in the registration."""
    batching: bool = True
    """Dynamic batching on (EAS ``rpc.batching``)."""
    max_batch_size: int = Field(32, ge=1)
    """Most rows per runtime call (EAS ``rpc.max_batch_size``)."""
    max_batch_timeout_ms: float = Field(5.0, ge=0)
    """Longest wait for a batch to fill, from the oldest request (EAS ``rpc.max_batch_timeout``)."""
    max_queue_size: int = Field(256, ge=1)
    """Queued requests beyond which requests get 503 (EAS ``rpc.max_queue_size``)."""
    workers: int = Field(1, ge=1)
    """Runtime sessions run in parallel (EAS ``rpc.worker_threads``)."""
    intra_op_threads: int | None = Field(None, ge=1)
    """Threads per session (default: usable cores / workers; usable = CPU affinity, capped by a
    cgroup quota)."""
    ort_spinning: bool | None = None
    """Let ONNX Runtime's intra-op threads spin between ops (default: only when the sessions'
    threads leave a core for the event loop; spinning against it costs more than it gains)."""
    frontends: int = Field(0, ge=0)
    """HTTP front end processes sharing the port, feeding one executor that owns the sessions and
    the batcher (0: one on CPU, one per spare core up to 4 on a GPU; 1: a single process)."""
    handoff: Literal["auto", "inline", "threads"] = "auto"
    """Where batches run: ``inline`` on the event loop's thread (no thread wake-ups; one worker,
    CPU), ``threads`` on worker threads, ``auto`` inline when one CPU worker's threads take every
    usable core (docs/eas_server.md says why)."""
    priority_levels: int = Field(2, ge=1)
    """Priority levels; requests without ``parameters.priority`` get the lowest."""
    max_request_rows: int = Field(1024, ge=1)
    """Hard limit on rows per request; larger ones get 400 (smaller oversized ones are split)."""
    max_body_mb: float = Field(64.0, gt=0)
    """Largest request body, in MiB (413 beyond)."""
    token: SecretStr | None = None
    """Token required on model routes (``Authorization: Bearer <token>`` or EAS's bare token)."""
    insecure: bool = False
    """Serve beyond loopback without a token: without it, a ``host`` other than loopback and
    no token is refused at start (``--insecure``)."""
    drain_timeout_s: float = Field(30.0, ge=0)
    """On SIGTERM: longest time to keep serving after deregistering, until traffic stops."""
    log_level: str = "warning"
    """Logging level."""
    padding: PaddingChoice = "auto"
    """Pad requests of different lengths into one batch (onnx processor only): ``auto`` (default)
    probes the model at load, ``off`` never pads; ``metadata.padding`` may declare it instead
    (``{"inputs": {NAME: {"axis": 1, "value": 0}}, "outputs": {NAME: 1}}``, or ``false``: off)."""

    @model_validator(mode="before")
    @classmethod
    def _bundle_processor(cls, data: Any) -> Any:
        """``--model BUNDLE_DIR`` without a processor serves the bundle (``pipeline``, or
        ``seq2seq`` for a generation bundle)."""
        if isinstance(data, dict) and not data.get("processor") and data.get("model"):
            if (Path(str(data["model"])) / "pipeline.json").is_file():
                data = {**data, "processor": "pipeline"}
            elif (Path(str(data["model"])) / "generation.json").is_file():
                blade = (Path(str(data["model"])) / "blade.json").is_file()  # blade's derived one
                data = {**data, "processor": "blade" if blade else "seq2seq"}
        return data

    @field_validator("padding", mode="before")
    @classmethod
    def _padding_choice(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool):  # metadata.padding: false
            value = "auto" if value else "off"
        if value != "auto" and info.data.get("processor", "onnx") != "onnx":
            raise ValueError("only the onnx processor takes padding (blade's is in its artifact)")
        return value

    @field_validator("model")
    @classmethod
    def _model_exists(cls, value: str) -> str:
        if value and not Path(value).exists():
            raise ValueError(f"model path {value} does not exist")
        return value

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"model repository {value} is not a directory")
        return value

    @model_validator(mode="after")
    def _something_to_serve(self) -> ServerSettings:
        if self.model_repository is None and not (self.model and self.name):
            missing = " and ".join(f for f in ("model", "name") if not getattr(self, f))
            raise ValueError(
                f"missing {missing}: give --model and --name, or --model-repository DIR"
            )
        if self.model and not self.name:
            raise ValueError("missing name: --model needs --name")
        if self.model_repository is not None and self.frontends > 1:
            raise ValueError(
                "--frontends > 1 serves one model; a --model-repository instance serves from one "
                "process (--frontends 0 or 1)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _ServiceJsonSource(settings_cls)

    @classmethod
    def load(
        cls, flags: dict[str, Any], service_json: dict[str, Any] | None = None
    ) -> ServerSettings:
        """Build settings from flags (None values are ignored), the environment and a service JSON.

        Raises:
            pydantic.ValidationError: a value is missing or invalid.
        """
        token = _SERVICE_JSON.set(service_json or {})
        try:
            return cls(**{k: v for k, v in flags.items() if v is not None})
        finally:
            _SERVICE_JSON.reset(token)

    def processor_options(self) -> dict[str, Any]:
        """What ``create_processor`` takes from these settings besides workers, threads and
        spinning: ``padding`` (onnx), or for a generation bundle, whatever serves it (``seq2seq``,
        or ``blade`` for its derived bundle), the running batch and the queue: its engine batches
        decoder steps itself."""
        options: dict[str, Any] = {} if self.padding == "auto" else {"padding": self.padding}
        generative = bool(self.model) and (Path(self.model) / "generation.json").is_file()
        if self.processor == "seq2seq" or generative:
            options.update(max_batch_size=self.max_batch_size, max_queue_size=self.max_queue_size)
        return options

    @property
    def service_name(self) -> str:
        return self.service or f"{self.name}-{self.version}"

    @property
    def exposed_without_token(self) -> bool:
        """Whether anyone who can reach ``host`` could call the model: no token (an empty one
        is none, as on the model routes) and ``host`` beyond loopback."""
        has_token = self.token is not None and bool(self.token.get_secret_value())
        return not has_token and not is_loopback(self.host)

    @property
    def open_on_purpose(self) -> bool:
        """``exposed_without_token`` and allowed by ``insecure``: what the start-up warning and
        the build info's ``insecure`` label report."""
        return self.insecure and self.exposed_without_token


PER_MODEL_FIELDS: frozenset[str] = frozenset(
    {
        "model", "name", "version", "processor", "service", "weight", "batching",
        "max_batch_size", "max_batch_timeout_ms", "max_queue_size", "workers",
        "intra_op_threads", "padding", "priority_levels", "max_request_rows",
    }
)  # fmt: skip
"""The settings each model version of a repository may set for itself (its service JSON); the
others (address, store, token, limits of the process) are the instance's."""
