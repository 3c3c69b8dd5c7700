"""Blade's runtime for a generation bundle: the scheduler's ``Runtime`` (``encode`` and
``new_cache``, ``eas_server.generation``) over the encoder and decoder an optimize run chose,
run the way its ``blade.json`` says.

Two ways, by ``Seq2SeqConfig.device_cache``:

- host caches (the CPU, and the plain baseline on CUDA): ``HostCache`` keeps the rows' keys and
  values in numpy and each step runs the decoder through ``BladeRuntime`` (numpy in and out: on
  CUDA, ONNX Runtime copies the caches to the device at every step);
- device caches (CUDA): the encoder's output and the caches stay on the device (``_devcache``),
  the step updates the self cache in its own graph (``_cachegraph``), and with
  ``decoder.cuda_graph`` each ``(rows, cache length)`` bucket of ``decoder.buckets`` replays a
  CUDA graph. The same code runs on the CPU EP (``provider="cpu"``), which is how tests hold it
  to ``HostCache``.

The optimizer verifies and times every candidate through this class, and the blade processor
serves the chosen one through it: what was measured is what is served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eas_server.generation._cache import Cache, HostCache

from ._devcache import DeviceCache, DeviceDecoder, DeviceEncoder
from ._devops import cache_tensors
from ._runtime import BladeRuntime, RuntimeConfig

__all__ = ["BladeSeq2Seq", "Seq2SeqConfig", "row_buckets"]


def row_buckets(largest: int) -> list[int]:
    """Row counts of the decoder step's CUDA graphs: powers of two up to ``largest`` (and it)."""
    rows, size = [], 1
    while size < largest:
        rows.append(size)
        size *= 2
    return [*rows, largest]


@dataclass
class Seq2SeqConfig:
    """How to run a generation bundle's encoder and decoder (``blade.json``'s ``runtime``).

    Attributes:
        encoder: the encoder's runtime (``buckets``: ``[batch, 0]``, graphs per batch bucket).
        decoder: the decoder step's runtime (``buckets``: ``[rows, cache length]``).
        device_cache: keep the caches on the device (``_devcache``) instead of in numpy.
    """

    encoder: RuntimeConfig = field(default_factory=RuntimeConfig)
    decoder: RuntimeConfig = field(default_factory=RuntimeConfig)
    device_cache: bool = False

    @property
    def provider(self) -> str:
        return self.decoder.provider

    def json(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.json(),
            "decoder": self.decoder.json(),
            "device_cache": self.device_cache,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Seq2SeqConfig:
        return cls(
            RuntimeConfig.from_json(doc.get("encoder") or {}),
            RuntimeConfig.from_json(doc.get("decoder") or {}),
            bool(doc.get("device_cache", False)),
        )

    def with_threads(self, threads: int | None) -> Seq2SeqConfig:
        """The same with ``intra_op_threads`` set on both (None: left as they are)."""
        if threads is None:
            return self
        encoder = RuntimeConfig(**{**self.encoder.json(), "intra_op_threads": threads})
        decoder = RuntimeConfig(**{**self.decoder.json(), "intra_op_threads": threads})
        return Seq2SeqConfig(encoder, decoder, self.device_cache)


class BladeSeq2Seq:
    """An encoder and a decoder step loaded as ``config`` says: the scheduler's ``Runtime``.

    Args:
        encoder, decoder: the bundle's ONNX files (contract IO, ``docs/generation``).
        config: how to run them.
        spinning: ONNX Runtime's intra-op spinning.

    Raises:
        RuntimeNotAvailable: a CUDA config without the CUDA execution provider.
    """

    def __init__(
        self,
        encoder: str | Path,
        decoder: str | Path,
        config: Seq2SeqConfig,
        *,
        spinning: bool = False,
    ):
        self.config = config
        self.device = "cpu" if config.provider == "cpu" else "gpu"
        self._device_encoder: DeviceEncoder | None = None
        self._device_decoder: DeviceDecoder | None = None
        self._encoder: BladeRuntime | None = None
        self._decoder: BladeRuntime | None = None
        if config.device_cache:
            where = "cpu" if config.provider == "cpu" else "cuda"
            self._device_encoder = DeviceEncoder(
                str(encoder), config.encoder, where, spinning=spinning
            )
            self._device_decoder = DeviceDecoder(
                str(decoder), config.decoder, where, spinning=spinning
            )
            if self._device_encoder.dtype != self._device_decoder.dtype:
                raise ValueError(
                    f"the encoder outputs {self._device_encoder.dtype} caches and the decoder "
                    f"takes {self._device_decoder.dtype}: they cannot share a device cache"
                )
        else:
            self._encoder = BladeRuntime(encoder, config.encoder, spinning=spinning)
            self._decoder = BladeRuntime(decoder, config.decoder, spinning=spinning)
            names = [*self._decoder.input_names, *self._decoder.output_names]
            self._cross = cache_tensors(self._encoder.output_names, "cross")
            self._self = cache_tensors(names, "self")
            self._new = cache_tensors(names, "new")

    def encode(self, features: np.ndarray) -> Any:
        """``[B, n_mels, n_frames]`` -> the cross-attention keys/values per layer (numpy, in
        ``cache_names`` order; or ``Encoded`` on the device)."""
        if self._device_encoder is not None:
            return self._device_encoder.encode(features)
        assert self._encoder is not None
        out = self._encoder.run({"input_features": features})
        return [out[name] for name in self._cross]

    def decode(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        self_kv: list[np.ndarray],
        cross_kv: list[np.ndarray],
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decoder call on host arrays (``HostCache``'s ``DecodeFn``)."""
        assert self._decoder is not None, "decode() is the host-cache path"
        feed = {"tokens": tokens, "positions": positions}
        feed.update(zip(self._self, self_kv, strict=True))
        feed.update(zip(self._cross, cross_kv, strict=True))
        out = self._decoder.run(feed)
        return out["logits"], [out[name] for name in self._new]

    def new_cache(self, capacity: int, sizes: tuple[int, ...]) -> Cache:
        """Caches for ``capacity`` rows: on the device with ``device_cache``, else in numpy."""
        if self._device_decoder is not None:
            return DeviceCache(self._device_decoder, capacity, sizes)
        return HostCache(self.decode, capacity, sizes)
