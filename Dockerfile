# syntax=docker/dockerfile:1
# CLCE serving image for one NVIDIA GPU (12 GB is plenty): ONNX Runtime on CUDA 12 + cuDNN 9, no torch.
#
#   docker build -t clce-serve .
#   docker run --gpus 1 -p 8000:8000 \
#       -v "$PWD/models/NAME:/models:ro" -v clce-data:/data clce-serve
#
# /models is the export folder (encoder.onnx, head.onnx, model.json), /data holds the support-set
# database. Every CLCE_* setting can be passed with -e (CLCE_API_KEY, CLCE_MAX_BATCH, ...).
# Needs the NVIDIA Container Toolkit and a driver for CUDA 12 (>= 525 with minor-version
# compatibility). The CPU image is docker/Dockerfile.cpu.

ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------- build: a venv with the server
FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The serve dependencies with onnxruntime-gpu instead of onnxruntime (one requirements file,
# checked against pyproject's [serve] extra by tests/serving/test_packaging.py) ...
COPY requirements-serve.txt requirements-serve-gpu.txt /src/
RUN pip install -r /src/requirements-serve-gpu.txt
# ... then the project itself without dependencies, so pip never pulls the CPU onnxruntime.
COPY pyproject.toml README.md /src/
COPY clce_core /src/clce_core
COPY serving /src/serving
RUN pip install --no-deps /src \
    && if pip show onnxruntime >/dev/null 2>&1; then echo "onnxruntime must not sit beside onnxruntime-gpu" >&2; exit 1; fi \
    && python -c "import onnxruntime as ort, serving.app; assert 'CUDAExecutionProvider' in ort.get_available_providers(), ort.get_available_providers()"

# ---------------------------------------------------------------- runtime
FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin clce \
    && mkdir -p /models /data \
    && chown clce:clce /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CLCE_DEVICE=cuda \
    CLCE_MODEL_DIR=/models \
    CLCE_DB_PATH=/data/support_sets.sqlite3
VOLUME ["/models", "/data"]
USER clce
WORKDIR /home/clce
EXPOSE 8000
# Ready = model verified, loaded and warmed up, and CUDA really running it (see /health/ready).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4)"]
CMD ["python", "-m", "serving", "--host", "0.0.0.0", "--port", "8000"]
