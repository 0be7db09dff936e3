"""The serving install path: requirements files match pyproject, the images swap the runtime, no torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _requirements(name: str) -> list[str]:
    lines = (REPO / name).read_text().splitlines()
    return [line.split("#")[0].replace(" ", "") for line in lines if line.split("#")[0].strip()]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_requirements_file_is_the_serve_extra_without_onnxruntime() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [r for r in project["optional-dependencies"]["serve"] if _name(r) != "onnxruntime"]
    wanted += project["dependencies"]  # `pip install --no-deps .` skips the base dependencies too
    assert sorted(r.replace(" ", "") for r in wanted) == sorted(_requirements("requirements-serve.txt"))


@pytest.mark.parametrize(
    ("variant", "runtime", "other"),
    [("gpu", "onnxruntime-gpu", "onnxruntime"), ("cpu", "onnxruntime", "onnxruntime-gpu")],
)
def test_runtime_variants_add_exactly_one_onnxruntime(variant: str, runtime: str, other: str) -> None:
    reqs = _requirements(f"requirements-serve-{variant}.txt")
    assert "-rrequirements-serve.txt" in reqs
    names = [_name(r) for r in reqs if not r.startswith("-r")]
    assert names == [runtime]


@pytest.mark.parametrize(
    ("dockerfile", "requirements", "device"),
    [
        ("Dockerfile", "requirements-serve-gpu.txt", "cuda"),
        ("docker/Dockerfile.cpu", "requirements-serve-cpu.txt", "cpu"),
    ],
)
def test_dockerfiles(dockerfile: str, requirements: str, device: str) -> None:
    text = (REPO / dockerfile).read_text()
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs == [f"RUN pip install -r /src/{requirements}", "RUN pip install --no-deps /src \\"], (
        installs
    )
    for needle in (
        f"CLCE_DEVICE={device}",
        "CLCE_MODEL_DIR=/models",
        'VOLUME ["/models", "/data"]',
        "USER clce",
        "HEALTHCHECK",
        "/health/ready",
        '"python", "-m", "serving", "--host", "0.0.0.0"',
    ):
        assert needle in text, needle
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for copied in re.findall(r"^COPY (?!--from)(.+) /src/", text, flags=re.M):
        for path in copied.split():
            assert f"!{Path(path).parts[0]}" in ignored or path.startswith("requirements"), path


def test_serving_imports_no_torch_and_nothing_from_training() -> None:
    code = (
        "import sys, serving.app, serving.__main__, serving.predict; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'torchvision', 'training')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
