"""serving.sessions.choose_providers: CUDA first with the options for varying batch sizes, else the CPU."""

from __future__ import annotations

import logging

import onnxruntime as ort
import pytest

from serving import sessions


def test_cuda_comes_first_with_heuristic_conv_search_and_exact_arena_growth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    (name, options), cpu = sessions.choose_providers("cuda")
    assert (name, cpu) == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options is not sessions.CUDA_OPTIONS  # a copy: a session cannot change the next one's options
    assert sessions.choose_providers("cpu") == ["CPUExecutionProvider"]


def test_cuda_asked_for_without_the_provider_logs_and_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.ERROR, logger="serving.sessions"):
        assert sessions.choose_providers("cuda") == ["CPUExecutionProvider"]
    assert "install onnxruntime-gpu" in caplog.text
    assert sessions.choose_providers("auto") == ["CPUExecutionProvider"]
