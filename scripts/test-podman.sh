#!/usr/bin/env bash
# The core of the suite against Podman (tests/podman_core.txt, and tests/test_podman.py):
#   ensure-podman (rootful, and rootless for the user $LOGIST_PODMAN_USER, default
#   logist-podman, made here) -> logist's images into both Podman stores (docker save | podman
#   load, skipped when the same image id is there) -> the rootful run as root -> the rootless
#   run as that user, with a venv from /usr/bin/python3 and a copy of the checkout it can read
#   (/root is mode 700). Needs root, the Docker images (scripts/build-images.sh) and .venv.
# Extra arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

USER_NAME=${LOGIST_PODMAN_USER:-logist-podman}
WORK=${LOGIST_PODMAN_WORK:-/tmp/logist-podman-ci}
ROOTFUL=unix:///run/podman/podman.sock
IMAGES=(logist/busybox:latest logist/step:latest logist/proxy:latest)

say() { echo "test-podman: $*" >&2; }

if ! id "$USER_NAME" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/sh "$USER_NAME"
  say "made user $USER_NAME"
fi
uid=$(id -u "$USER_NAME")
home=$(getent passwd "$USER_NAME" | cut -d: -f6)
answers() { curl -fsS --max-time 5 --unix-socket "$1" http://d/version >/dev/null 2>&1; }
RUNNING_BEFORE=()
for s in /run/podman/podman.sock "/run/user/$uid/podman/podman.sock"; do
  answers "$s" && RUNNING_BEFORE+=("$s")
done
ROOTLESS=$(scripts/ensure-podman.sh --rootless "$USER_NAME")

# The services this script started are stopped on the way out (and the rootless pause process).
stop_services() {
  local s pid
  for s in /run/podman/podman.sock "/run/user/$uid/podman/podman.sock"; do
    [[ " ${RUNNING_BEFORE[*]:-} " == *" $s "* ]] && continue
    pid=$(cat "$s.logist-pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
      say "stopped the Podman service on $s (pid $pid)"
      rm -f "$s.logist-pid"
    fi
  done
  if [[ " ${RUNNING_BEFORE[*]:-} " != *" /run/user/$uid/"* ]]; then
    pid=$(cat "/run/user/$uid/libpod/tmp/pause.pid" 2>/dev/null || true)
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  fi
}
trap stop_services EXIT
as_user() { (cd / && runuser -u "$USER_NAME" -- env XDG_RUNTIME_DIR="/run/user/$uid" HOME="$home" "$@"); }

# load_images CMD...: the images into the store of `CMD podman`, unless the same id is there
load_images() {
  local want=() img
  for img in "${IMAGES[@]}"; do
    local id have
    id=$(docker image inspect -f '{{.Id}}' "$img")
    have=$("$@" podman image inspect --format '{{.Id}}' "$img" 2>/dev/null || true)
    [ "sha256:$have" = "$id" ] || want+=("$img")
  done
  if [ ${#want[@]} -gt 0 ]; then
    say "loading ${want[*]} into ${*:-root}'s Podman"
    docker save "${want[@]}" | "$@" podman load -q >/dev/null
  fi
}
t=$(date +%s)
load_images
load_images as_user
say "images in both Podman stores after $(( $(date +%s) - t ))s"

mapfile -t ALL < <(grep -v '^#' tests/podman_core.txt | sed '/^$/d; s/^root://')
mapfile -t NONROOT < <(grep -v '^#' tests/podman_core.txt | sed '/^$/d; /^root:/d')

# The rootful run goes on in the background while the rootless one is prepared and runs (two
# engines, two users, two checkouts): its output is shown when both are done.
t_rootful=$(date +%s)
rootful_log=$(mktemp)
(DOCKER_HOST=$ROOTFUL .venv/bin/python -m pytest -q -p no:cacheprovider "${ALL[@]}" \
  tests/test_podman.py "$@" \
  && DOCKER_HOST=$ROOTFUL .venv/bin/python -m pytest -q -p no:cacheprovider -m beside_docker \
  tests/test_podman.py "$@") >"$rootful_log" 2>&1 &
rootful_pid=$!

# The rootless run: its own copy of the checkout and a venv it can read.
t=$(date +%s)
mkdir -p "$WORK"
chown "$USER_NAME:" "$WORK"
rm -rf "$WORK/src"
mkdir "$WORK/src"
cp -r logist tests pyproject.toml README.md "$WORK/src/"
chown -R "$USER_NAME:" "$WORK/src"
stamp=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$WORK/venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
  say "making the rootless user's venv in $WORK/venv"
  rm -rf "$WORK/venv"
  as_user /usr/bin/python3 -m venv "$WORK/venv"
  as_user "$WORK/venv/bin/pip" install -q --disable-pip-version-check -e "$WORK/src[test]"
  echo "$stamp" >"$WORK/venv/.stamp"
fi
as_user "$WORK/venv/bin/python" -m compileall -q "$WORK/src/logist" >/dev/null  # see setup-venv.sh
say "rootless checkout and venv ready after $(( $(date +%s) - t ))s"
set +e
t=$(date +%s)
(cd "$WORK/src" && runuser -u "$USER_NAME" -- env XDG_RUNTIME_DIR="/run/user/$uid" HOME="$home" \
  DOCKER_HOST="$ROOTLESS" "$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider \
  "${NONROOT[@]}" tests/test_podman.py "$@" \
  && runuser -u "$USER_NAME" -- env XDG_RUNTIME_DIR="/run/user/$uid" HOME="$home" \
  DOCKER_HOST="$ROOTLESS" "$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider \
  -m rootless_podman tests/test_podman.py "$@")
rc_rootless=$?
say "rootless Podman run (as $USER_NAME): pytest exit $rc_rootless after $(( $(date +%s) - t ))s"
wait "$rootful_pid"
rc_rootful=$?
say "rootful Podman run:"
cat "$rootful_log" >&2
rm -f "$rootful_log"
say "rootful Podman run: pytest exit $rc_rootful after $(( $(date +%s) - t_rootful ))s"
set -e
say "Podman runs done after $(( $(date +%s) - start ))s"
[ "$rc_rootful" = 0 ] && [ "$rc_rootless" = 0 ]
