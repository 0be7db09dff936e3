# syntax=docker/dockerfile:1
# CLCE serving image for one NVIDIA GPU (12 GB is plenty): ONNX Runtime on CUDA 12 + cuDNN 9, no torch.
#
#   docker build -t clce-serve .
#   docker run --gpus 1 -p 8000:8000 \
#       -v "$PWD/models/NAME:/models:ro" -v clce-data:/data clce-serve
#
# /models is the export folder (encoder.onnx, head.onnx, model.json), /data holds the support-set
# database (nothing is written there with a PostgreSQL CLCE_DB_URL). Every CLCE_* setting can be
# passed with -e (CLCE_API_KEY, CLCE_DB_URL, CLCE_MAX_BATCH, ...).
#
# The CUDA and cuDNN libraries come from PyPI (onnxruntime-gpu's [cuda,cudnn] extras: the nvidia-*-cu12
# wheels), so the base is a plain Python image, not nvidia/cuda. The host needs only the NVIDIA driver
# (CUDA 12: >= 525 with minor-version compatibility) and the NVIDIA Container Toolkit, which mounts
# libcuda into the container. Where public images cannot be pulled, build the base from Debian first:
#
#   sudo docker/base-from-debian.sh      # -> clce-base:bookworm
#   DOCKER_BUILDKIT=0 docker build --build-arg PYTHON_IMAGE=clce-base:bookworm -t clce-serve .
#
# The CPU image is docker/Dockerfile.cpu; docs/deployment.md has both images' sizes.

ARG PYTHON_IMAGE=python:3.12-slim

# ---------------------------------------------------------------- build: a venv with the server
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The serve dependencies with onnxruntime-gpu[cuda,cudnn] instead of onnxruntime (one requirements
# file, checked against pyproject's [serve] extra by tests/serving/test_packaging.py) ...
COPY requirements-serve.txt requirements-serve-gpu.txt /src/
RUN pip install -r /src/requirements-serve-gpu.txt
# ... then the project itself without dependencies, so pip never pulls the CPU onnxruntime. The
# nvidia-* wheels' library folders are listed for the dynamic linker (ONNX Runtime's CUDA provider
# links libcudart, libcublas, libcudnn, ... by name and has no RPATH to them).
COPY pyproject.toml README.md /src/
COPY clce_core /src/clce_core
COPY serving /src/serving
RUN pip install --no-deps /src \
    && if pip show onnxruntime >/dev/null 2>&1; then echo "onnxruntime must not sit beside onnxruntime-gpu" >&2; exit 1; fi \
    && python -c "import onnxruntime as ort, serving.app; assert 'CUDAExecutionProvider' in ort.get_available_providers(), ort.get_available_providers()" \
    && find /opt/venv/lib -type d -path '*/site-packages/nvidia/*/lib' | sort > /opt/venv/nvidia-libs.conf

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin clce \
    && mkdir -p /models /data \
    && chown clce:clce /data
COPY --from=build /opt/venv /opt/venv
# Every library the CUDA provider and the nvidia-* wheels link must resolve (cuDNN also opens its
# sub-libraries by name), except libcuda: the driver, which the NVIDIA Container Toolkit mounts.
RUN ln -s /opt/venv/nvidia-libs.conf /etc/ld.so.conf.d/clce-nvidia-libs.conf \
    && ldconfig \
    && capi=$(/opt/venv/bin/python -c "import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__).parent / 'capi')") \
    && missing=$(for lib in "$capi"/libonnxruntime_providers_cuda.so $(sed 's|$|/*.so*|' /opt/venv/nvidia-libs.conf); do ldd "$lib" | grep 'not found' | grep -v 'libcuda\.so'; done | sort -u) \
    && if [ -n "$missing" ]; then echo "the CUDA provider cannot find: $missing" >&2; exit 1; fi
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CLCE_DEVICE=cuda \
    CLCE_MODEL_DIR=/models \
    CLCE_DB_URL=sqlite:////data/support_sets.sqlite3
VOLUME ["/models", "/data"]
USER clce
WORKDIR /home/clce
EXPOSE 8000
# Ready = model verified, loaded and warmed up, and CUDA really running it (see /health/ready).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4)"]
CMD ["python", "-m", "serving", "--host", "0.0.0.0", "--port", "8000"]
