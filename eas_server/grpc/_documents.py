"""The HTTP app's JSON documents as gRPC messages; pure.

The server metadata, model metadata, model config and statistics are built once, by ``EasApp``
and ``ServerMetrics``, as the dicts that the HTTP routes send; here they become the messages of the
same name, field for field (the proto3 JSON mapping of Triton's definitions), so that both
protocols always say the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format

from ._proto import model_config_pb2, service_pb2

__all__ = [
    "model_config_response",
    "model_metadata_response",
    "server_metadata_response",
    "statistics_response",
]


def server_metadata_response(document: dict[str, Any]) -> Any:
    """``ServerMetadataResponse`` from the ``GET /v2`` document."""
    return json_format.ParseDict(document, service_pb2.ServerMetadataResponse())


def model_metadata_response(document: dict[str, Any]) -> Any:
    """``ModelMetadataResponse`` from the ``GET /v2/models/{m}`` document."""
    return json_format.ParseDict(document, service_pb2.ModelMetadataResponse())


def model_config_response(document: dict[str, Any]) -> Any:
    """``ModelConfigResponse`` from the ``GET .../config`` document.

    Triton's version policy lists int64 versions; a version that is not a number (allowed here)
    cannot be listed, so the policy then says nothing (the metadata still names the version).
    """
    document = dict(document)
    versions = document.get("version_policy", {}).get("specific", {}).get("versions", [])
    if not all(str(v).isdigit() for v in versions):
        document.pop("version_policy")
    config = json_format.ParseDict(document, model_config_pb2.ModelConfig())
    return service_pb2.ModelConfigResponse(config=config)


def statistics_response(statistics: Iterable[dict[str, Any]]) -> Any:
    """``ModelStatisticsResponse`` from ``model_stats`` entries (``ServerMetrics.statistics``)."""
    response = service_pb2.ModelStatisticsResponse()
    for entry in statistics:
        json_format.ParseDict(entry, response.model_stats.add())
    return response
