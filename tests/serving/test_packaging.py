"""The serving install path: requirements files match pyproject, the images swap the runtime, no torch."""

from __future__ import annotations

import re
import shutil
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


@pytest.mark.slow
def test_wheel_carries_the_web_page(tmp_path: Path) -> None:
    """The page's files are package data, so the wheel (and so the Docker images) serve them."""
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "clce_core", "training", "serving"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, src / name)  # a copy: building writes build/ and *.egg-info beside the sources
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
    ]
    subprocess.run([*cmd, str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("clce-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    static = REPO / "serving" / "static"
    wanted = {f"serving/static/{p.name}" for p in static.iterdir() if p.is_file()}
    assert "serving/static/index.html" in wanted and wanted <= names, sorted(wanted - names)
