#!/usr/bin/env bash
# End-to-end test of the container image, as a hospital would run it:
#   build (no network) -> migrate a fresh PostgreSQL database -> serve -> /healthz ->
#   generate and ingest a small synthetic cohort -> train -> reload -> /readyz ->
#   create an integration API key -> score a patient through the REST API.
# Every wait is bounded; the container, its volume and the database are removed on any
# exit, success or failure. Run through `make test-container` (needs the wheelhouse).
#
# Environment (all optional):
#   VITALCAST_TEST_DATABASE_URL  admin URL of the PostgreSQL server
#                                (default postgresql+psycopg://postgres@127.0.0.1:5432/test)
#   CONTAINER_SETUP              container-setup script (default: tools/ beside
#                                $VITALCAST_SHARED_DATA, else ../shared/tools/container-setup.sh)
#   PYTHON                       interpreter with psycopg (default .venv/bin/python)
#   BASE_IMAGE                   default localhost/python-base:3.11-bookworm
#   IMAGE                        tag to build (default localhost/vitalcast:test)
#   SYNTH_PATIENTS               synthetic ICU stays to generate (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${VITALCAST_SHARED_DATA:-}" ]; then
  SETUP=${CONTAINER_SETUP:-$(dirname "$VITALCAST_SHARED_DATA")/tools/container-setup.sh}
else
  SETUP=${CONTAINER_SETUP:-../shared/tools/container-setup.sh}
fi
BASE_IMAGE=${BASE_IMAGE:-localhost/python-base:3.11-bookworm}
IMAGE=${IMAGE:-localhost/vitalcast:test}
SYNTH_PATIENTS=${SYNTH_PATIENTS:-200}
ADMIN_URL=${VITALCAST_TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
PYTHON=${PYTHON:-.venv/bin/python}

RUN_ID="$$_$(date +%s)"
NAME="vitalcast-ct-${RUN_ID}"
VOLUME="vitalcast-ct-data-${RUN_ID}"
DB_NAME="vitalcast_ct_${RUN_ID}"
STARTED=$(date +%s)
FAILED_STEP=""
DB_CREATED=0

step() {
  FAILED_STEP="$*"
  printf '\n== [%4ss] %s\n' "$(($(date +%s) - STARTED))" "$*"
}

die() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

# Admin SQL through psycopg (a runtime dependency, so present wherever the tests run).
admin_sql() {
  "$PYTHON" - "$ADMIN_URL" "$1" <<'PY'
import sys

import psycopg

url = sys.argv[1].replace("postgresql+psycopg://", "postgresql://", 1)
with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
    conn.execute(sys.argv[2])
PY
}

database_url() {
  "$PYTHON" - "$ADMIN_URL" "$DB_NAME" <<'PY'
import sys

from sqlalchemy.engine import make_url

url = make_url(sys.argv[1]).set(drivername="postgresql+psycopg", database=sys.argv[2])
print(url.render_as_string(hide_password=False))
PY
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ]; then
    printf '\n!! failed at step: %s (exit %s)\n' "$FAILED_STEP" "$rc" >&2
    if podman container exists "$NAME" 2>/dev/null; then
      echo "-- last 60 lines of the server container's log:" >&2
      timeout 20 podman logs --tail 60 "$NAME" >&2 || true
    fi
  fi
  echo "== cleanup: container, volume, database ${DB_NAME}"
  timeout 60 podman rm --force --time 5 "$NAME" >/dev/null 2>&1 || true
  timeout 30 podman volume rm --force "$VOLUME" >/dev/null 2>&1 || true
  if [ "$DB_CREATED" = 1 ]; then
    admin_sql "DROP DATABASE IF EXISTS \"${DB_NAME}\" WITH (FORCE)" \
      || echo "warning: could not drop database ${DB_NAME}" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# GET/POST with a bounded time; prints the body, fails on a non-2xx status.
http() {
  curl --silent --show-error --fail-with-body --max-time 30 "$@"
}

# wait_for URL SECONDS: poll until the URL answers 2xx, at most SECONDS.
wait_for() {
  local url=$1 limit=$2 deadline=$(($(date +%s) + $2))
  until curl --silent --fail --max-time 5 --output /dev/null "$url"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      die "$url did not answer 2xx within ${limit}s"
    fi
    if [ "$(podman inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null)" != true ]; then
      die "the server container stopped while waiting for $url"
    fi
    sleep 2
  done
}

json_get() {  # json_get EXPR: evaluate EXPR on the JSON document on stdin, bound to `d`
  "$PYTHON" -c "import json, sys; d = json.load(sys.stdin); print($1)"
}

step "container runtime: ${SETUP}"
"$PYTHON" -c 'import psycopg' || die "${PYTHON} cannot import psycopg (run 'make install' or set PYTHON)"
[ -f "$SETUP" ] || die "container setup script not found at ${SETUP} (set CONTAINER_SETUP)"
timeout 900 bash "$SETUP"
if ! ls wheelhouse/vitalcast-*.whl >/dev/null 2>&1; then
  die "no wheelhouse: run 'make wheelhouse' first (make test-container does)"
fi

step "build ${IMAGE} on ${BASE_IMAGE} with --network=none"
build_started=$(date +%s)
timeout 1800 podman build --network=none --format docker --file deploy/Dockerfile \
  --build-arg "BASE_IMAGE=${BASE_IMAGE}" --tag "$IMAGE" . || die "image build failed"
echo "built in $(($(date +%s) - build_started)) s"

step "image facts: size, user, healthcheck"
size_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
size_mb=$((size_bytes / 1000000))
compressed_mb=$(( $(timeout 300 podman save --format docker-archive "$IMAGE" | gzip -1 | wc -c) / 1000000 ))
goal="met"
[ "$size_mb" -lt 400 ] || goal="NOT met"
echo "image size: ${size_mb} MB uncompressed, ${compressed_mb} MB gzip-compressed (goal < 400 MB uncompressed: ${goal})"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
echo "image user: ${user}"
case "$user" in "" | root | 0 | 0:* | root:*) die "image runs as root" ;; esac
uid=$(timeout 60 podman run --rm --network=none --no-healthcheck --entrypoint id "$IMAGE" -u)
[ "$uid" != 0 ] || die "container process runs as uid 0"
echo "container uid: ${uid}"
healthcheck=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")
case "$healthcheck" in *healthcheck.py*) echo "healthcheck: ${healthcheck}" ;; *) die "image has no HEALTHCHECK" ;; esac
commands=$(timeout 60 podman run --rm --network=none --no-healthcheck "$IMAGE" --help)

step "fresh PostgreSQL database ${DB_NAME}"
DB_CREATED=1
admin_sql "CREATE DATABASE \"${DB_NAME}\""
DATABASE_URL=$(database_url)
PORT=$(free_port)
b64key() { head -c 32 /dev/urandom | base64 | tr -d '\n'; }
ENV_ARGS=(
  --env "VITALCAST_DATABASE_URL=${DATABASE_URL}"
  --env "VITALCAST_SECRET_KEY=$(b64key)"
  --env "VITALCAST_FIELD_KEY=ct1:$(b64key)"
  --env "VITALCAST_HMAC_KEY=$(b64key)"
  --env "VITALCAST_AUDIT_KEY=ct1:$(b64key)"
  --env "VITALCAST_HOST=127.0.0.1"
  --env "VITALCAST_PORT=${PORT}"
  --env "VITALCAST_WORKERS=2"
)
podman volume create "$VOLUME" >/dev/null
# One-shot jobs share the data volume (model registry) with the server, as in compose.
job() {
  timeout "${JOB_TIMEOUT:-600}" podman run --rm --network=host --no-healthcheck "${ENV_ARGS[@]}" \
    --volume "${VOLUME}:/var/lib/vitalcast" "$IMAGE" "$@"
}

step "migrate: vitalcast db upgrade"
job db upgrade

step "serve: gunicorn on 127.0.0.1:${PORT} (--network=host)"
# No systemd here to schedule the periodic HEALTHCHECK; it is run on demand below.
podman run --detach --name "$NAME" --network=host --health-interval disable "${ENV_ARGS[@]}" \
  --volume "${VOLUME}:/var/lib/vitalcast" "$IMAGE" serve >/dev/null
wait_for "http://127.0.0.1:${PORT}/healthz" 120
echo "healthz: $(http "http://127.0.0.1:${PORT}/healthz")"
timeout 60 podman healthcheck run "$NAME" || die "the image's HEALTHCHECK reports unhealthy"
echo "container HEALTHCHECK: healthy"
ready_status=$(curl --silent --max-time 10 --output /dev/null --write-out '%{http_code}' \
  "http://127.0.0.1:${PORT}/readyz")
[ "$ready_status" = 503 ] || die "/readyz answered ${ready_status} before any model was trained (want 503)"
echo "readyz before training: 503 (no champion model), as expected"

has_command() { grep -qE "^  $1( |$)" <<<"$commands"; }
for needed in synth train apikeys; do
  has_command "$needed" || die "the image has no 'vitalcast ${needed}' command (not merged yet?)"
done

step "ingest: vitalcast synth --patients ${SYNTH_PATIENTS}"
job synth --patients "$SYNTH_PATIENTS"

step "train: vitalcast train --task icu-mortality --budget fast"
job train --task icu-mortality --budget fast

step "reload the server (SIGHUP: gunicorn restarts its workers, which load the new champion)"
podman kill --signal HUP "$NAME" >/dev/null
wait_for "http://127.0.0.1:${PORT}/readyz" 180
echo "readyz: $(http "http://127.0.0.1:${PORT}/readyz")"

step "credentials: vitalcast apikeys create --role integration"
KEY=$(job apikeys create --role integration --name container-test | tail -n 1)
[ -n "$KEY" ] || die "apikeys create printed no key"
AUTH=(--header "Authorization: Bearer ${KEY}")
unauth=$(curl --silent --max-time 10 --output /dev/null --write-out '%{http_code}' \
  "http://127.0.0.1:${PORT}/api/v1/patients")
[ "$unauth" = 401 ] || die "/api/v1/patients without a key answered ${unauth} (want 401)"

step "predict through the API"
patients=$(http "${AUTH[@]}" "http://127.0.0.1:${PORT}/api/v1/patients?limit=5")
patient_id=$(json_get 'd["items"][0]["id"]' <<<"$patients")
echo "ward list: $(json_get 'd["total"]' <<<"$patients") in-progress stays; scoring one of them"
prediction=$(http "${AUTH[@]}" --header 'Content-Type: application/json' \
  --data "{\"patient_id\": \"${patient_id}\"}" "http://127.0.0.1:${PORT}/api/v1/predict")
json_get '"probability %.4f, band %s, model %s, %d factors" % (d["probability"], d["band"], d["model_version"], len(d["factors"]))' <<<"$prediction"
json_get '0 <= d["probability"] <= 1 or sys.exit("probability out of [0, 1]")' <<<"$prediction" >/dev/null

step "done: the image builds offline, runs as uid ${uid}, serves, trains and predicts"
echo "container test passed in $(($(date +%s) - STARTED)) s; image ${size_mb} MB (${compressed_mb} MB compressed)"
