#!/usr/bin/env bash
# Docker smoke test of the CPU serving image, end to end (`make docker-smoke`; not part of `make test`:
# it needs a Docker engine, usually root, and minutes):
#
#   1. build docker/Dockerfile.cpu (on PYTHON_IMAGE; the Debian base from docker/base-from-debian.sh
#      is built first when that is the base and it is missing),
#   2. run it as the Kubernetes manifests do: read-only root file system, /tmp a tmpfs, no
#      capabilities, a real export mounted read-only at /models, a volume at /data, an API key,
#   3. wait for Docker's HEALTHCHECK to report healthy,
#   4. check the API key is enforced, classify an image, create a support set and use it for
#      /fewshot, check the process runs as the non-root user and cannot write the model or the
#      root file system,
#   5. remove the container, the volume and the temporary files (the image stays, for reuse).
#
# Options (environment):
#   MODEL_DIR=models/quickstart           the export folder to mount (encoder.onnx, head.onnx, model.json)
#   PYTHON_IMAGE=clce-base:bookworm       base image (python:3.12-slim where public images can be pulled)
#   IMAGE=clce-serve-cpu:smoke            tag of the image built
#   HEALTH_TIMEOUT=240                    seconds to wait for "healthy"
#   GPU=1                                 also build the GPU image (./Dockerfile) as clce-serve:smoke;
#                                         it is run only where `docker run --gpus 1` works
# When no Docker engine answers and dockerd is installed, the script starts one (as root) with its
# log in $TMPDIR and stops it at the end. The classic builder is used (DOCKER_BUILDKIT=0).
set -euo pipefail

cd "$(dirname "$0")/.."
MODEL_DIR=${MODEL_DIR:-models/quickstart}
PYTHON_IMAGE=${PYTHON_IMAGE:-clce-base:bookworm}
IMAGE=${IMAGE:-clce-serve-cpu:smoke}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-240}
API_KEY=smoke-$RANDOM$RANDOM
export DOCKER_BUILDKIT=0

NAME=clce-smoke-$$
VOLUME=clce-smoke-data-$$
WORK=$(mktemp -d "${TMPDIR:-/tmp}/clce-smoke.XXXXXX")
DOCKERD_PID=

die() { echo "error: $*" >&2; exit 2; }
step() { echo "== $*"; }
ok() { echo "ok: $*"; }

cleanup() {
    local rc=$?
    if [ "$rc" != 0 ] && docker inspect "$NAME" >/dev/null 2>&1; then
        echo "-- container log (last 30 lines):" >&2
        docker logs --tail 30 "$NAME" >&2 2>&1 || true
    fi
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    docker volume rm "$VOLUME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    if [ -n "$DOCKERD_PID" ]; then kill "$DOCKERD_PID" 2>/dev/null || true; fi
    if [ "$rc" = 0 ]; then echo "smoke test passed"; else echo "smoke test FAILED" >&2; fi
}
trap cleanup EXIT

# ------------------------------------------------------------------ prerequisites
command -v docker >/dev/null || die "docker is missing: apt-get install docker.io"
command -v curl >/dev/null || die "curl is missing: apt-get install curl"
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || die "no Docker engine answers and dockerd is not installed: apt-get install docker.io"
    [ "$(id -u)" = 0 ] || die "no Docker engine answers: start it (sudo dockerd &, or systemctl start docker)"
    step "starting dockerd (log: $WORK/dockerd.log)"
    dockerd >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || die "dockerd did not start within 60 s; see $WORK/dockerd.log"
fi
for f in encoder.onnx head.onnx model.json; do
    [ -f "$MODEL_DIR/$f" ] || die "$MODEL_DIR/$f is missing: export a model first (python -m training.export --checkpoint runs/NAME/best.pt --output $MODEL_DIR) or set MODEL_DIR"
done
MODEL_ABS=$(cd "$MODEL_DIR" && pwd)

# ------------------------------------------------------------------ build
size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }
build() {  # build DOCKER_BUILD_ARGS...: the log goes to $WORK, its tail to stderr on failure
    docker build --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" "$@" . >"$WORK/build.log" 2>&1 \
        || { tail -n 30 "$WORK/build.log" >&2; die "docker build $* failed (log above)"; }
}
if [ "$PYTHON_IMAGE" = clce-base:bookworm ] && ! docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
    step "building the Debian base $PYTHON_IMAGE (docker/base-from-debian.sh)"
    start=$(date +%s)
    TAG=$PYTHON_IMAGE docker/base-from-debian.sh >"$WORK/base.log" 2>&1 \
        || { tail -n 30 "$WORK/base.log" >&2; die "docker/base-from-debian.sh failed (log above)"; }
    ok "built in $(( $(date +%s) - start )) s, $(size "$PYTHON_IMAGE"); $(grep '^base ok' "$WORK/base.log")"
fi
step "building $IMAGE from docker/Dockerfile.cpu on $PYTHON_IMAGE"
start=$(date +%s)
build -f docker/Dockerfile.cpu -t "$IMAGE"
ok "built in $(( $(date +%s) - start )) s, $(size "$IMAGE")"

if [ "${GPU:-0}" = 1 ]; then
    step "building clce-serve:smoke from ./Dockerfile (GPU) on $PYTHON_IMAGE"
    start=$(date +%s)
    build -t clce-serve:smoke
    ok "built in $(( $(date +%s) - start )) s, $(size clce-serve:smoke); the CUDA provider's libraries all resolve (checked in the build)"
    if docker run --rm --gpus 1 clce-serve:smoke true >"$WORK/gpu.log" 2>&1; then
        docker run --rm --gpus 1 -v "$MODEL_ABS:/models:ro" clce-serve:smoke python -c "
import onnxruntime as ort
s = ort.InferenceSession('/models/encoder.onnx', providers=['CUDAExecutionProvider'])
assert s.get_providers()[0] == 'CUDAExecutionProvider', s.get_providers()"
        ok "the GPU image runs the encoder on CUDAExecutionProvider (docker run --gpus 1)"
    else
        echo "note: the GPU image is built, not run: docker run --gpus 1 says: $(head -n 1 "$WORK/gpu.log")"
    fi
fi

# ------------------------------------------------------------------ run
step "running $IMAGE (read-only root, cap-drop ALL, $MODEL_DIR mounted read-only)"
docker volume create "$VOLUME" >/dev/null
docker run -d --name "$NAME" \
    --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
    -v "$MODEL_ABS:/models:ro" -v "$VOLUME:/data" \
    -e CLCE_API_KEY="$API_KEY" -e CLCE_MAX_BATCH=8 \
    -p 127.0.0.1::8000 "$IMAGE" >/dev/null
PORT=$(docker port "$NAME" 8000/tcp | head -n 1 | sed 's/.*://')
URL=http://127.0.0.1:$PORT
start=$(date +%s)
while :; do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$NAME" 2>/dev/null || echo gone)
    [ "$health" = healthy ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$NAME")" = true ] || die "the container stopped (status $health)"
    [ $(( $(date +%s) - start )) -lt "$HEALTH_TIMEOUT" ] || die "not healthy after $HEALTH_TIMEOUT s (status $health)"
    sleep 2
done
ok "HEALTHCHECK reports healthy after $(( $(date +%s) - start )) s; $URL"

# ------------------------------------------------------------------ the API
# JSON is read with the image's own Python, so the host needs nothing but curl.
json() { docker exec -i "$NAME" python -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
call() {  # call EXPECTED_STATUS METHOD PATH [curl args...] -> body on stdout
    local want=$1 method=$2 path=$3; shift 3
    local got
    got=$(curl -sS -o "$WORK/body" -w '%{http_code}' -X "$method" -H "X-API-Key: $API_KEY" "$@" "$URL$path")
    [ "$got" = "$want" ] || die "$method $path answered $got, expected $want: $(cat "$WORK/body")"
    cat "$WORK/body"
}

# Test images, drawn by the image's Pillow: two very different kinds, three variants each.
draw() {  # draw KIND INDEX > file.png
    docker exec -i "$NAME" python -c "
import io, sys
from PIL import Image, ImageDraw
kind, i = sys.argv[1], int(sys.argv[2])
im = Image.new('RGB', (96, 96), 'white')
d = ImageDraw.Draw(im)
if kind == 'stripes':
    for y in range(2 * i, 96, 12):
        d.rectangle([0, y, 95, y + 5], fill='black')
else:
    d.ellipse([20 + 3 * i, 20 + 2 * i, 76 - i, 76 - 2 * i], fill=(200, 30, 30))
buf = io.BytesIO(); im.save(buf, 'PNG'); sys.stdout.buffer.write(buf.getvalue())
" "$1" "$2"
}
for kind in stripes disc; do for i in 0 1 2; do draw "$kind" "$i" >"$WORK/$kind-$i.png"; done; done

status=$(curl -sS -o /dev/null -w '%{http_code}' -F "images=@$WORK/disc-0.png" "$URL/classify")
[ "$status" = 401 ] || die "POST /classify without X-API-Key answered $status, expected 401"
ok "the API key is enforced (401 without it)"

body=$(call 200 POST "/classify?top_k=3" -F "images=@$WORK/stripes-0.png")
ok "POST /classify: $(echo "$body" | json "d['results'][0]['filename'], [(t['label'], round(t['probability'], 3)) for t in d['results'][0]['top_k']]")"
[ "$(echo "$body" | json "len(d['results'][0]['top_k'])")" = 3 ] || die "/classify did not return top_k=3 labels: $body"

body=$(call 201 POST /support-sets -F name=smoke \
    -F "support=@$WORK/stripes-0.png" -F support_labels=stripes \
    -F "support=@$WORK/stripes-1.png" -F support_labels=stripes \
    -F "support=@$WORK/disc-0.png" -F support_labels=disc \
    -F "support=@$WORK/disc-1.png" -F support_labels=disc)
SET_ID=$(echo "$body" | json "d['id']")
ok "POST /support-sets: id $SET_ID, classes $(echo "$body" | json "d['classes']")"

body=$(call 200 POST /fewshot -F support_set_id="$SET_ID" \
    -F "queries=@$WORK/stripes-2.png" -F "queries=@$WORK/disc-2.png")
labels=$(echo "$body" | json "' '.join(r['label'] for r in d['results'])")
ok "POST /fewshot with the set: $(echo "$body" | json "[(r['filename'], r['label'], {k: round(v, 3) for k, v in r['scores'].items()}) for r in d['results']]")"
[ "$labels" = "stripes disc" ] || die "/fewshot labelled the unseen queries '$labels', expected 'stripes disc'"

call 200 GET "/support-sets/$SET_ID" >/dev/null
call 200 DELETE "/support-sets/$SET_ID" >/dev/null
call 404 GET "/support-sets/$SET_ID" >/dev/null
ok "GET, DELETE, then 404 for /support-sets/$SET_ID"

# ------------------------------------------------------------------ the process
uid=$(docker exec "$NAME" awk '/^Uid:/ {print $2}' /proc/1/status)
user=$(docker exec "$NAME" id -un)
if [ "$uid" != 10001 ] || [ "$user" != clce ]; then die "the server runs as uid $uid ($user), expected 10001 (clce)"; fi
ok "the server (PID 1: $(docker exec "$NAME" sh -c "tr '\\0' ' ' </proc/1/cmdline")) runs as uid $uid ($user)"
for path in /models/smoke-write-test /opt/venv/smoke-write-test; do
    if docker exec "$NAME" sh -c "touch $path" 2>/dev/null; then die "$path could be written"; fi
done
docker exec "$NAME" sh -c 'test -s /data/support_sets.sqlite3' || die "the support-set database is not in /data"
ok "/models and the root file system are read-only; the database is in /data"
