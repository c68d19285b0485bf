#!/usr/bin/env bash
# Make sure a Docker engine answers. Idempotent: starts nothing when `docker info` works.
# As root on a machine without an engine: installs Debian's docker.io if dockerd is missing,
# clears a stale pid file left by a killed daemon, starts dockerd in the background with its
# log in $LOGIST_DOCKERD_LOG (default /var/log/logist-dockerd.log) and waits (bounded). As root,
# it also keeps the job networks apart on the host's firewall and turns on the reverse-path
# filter on the engine's bridges (scripts/job-bridges.sh, rp-filter.sh).
set -euo pipefail

WAIT_SECONDS=${LOGIST_DOCKERD_WAIT:-60}
LOG=${LOGIST_DOCKERD_LOG:-/var/log/logist-dockerd.log}
PIDFILE=/var/run/docker.pid

say() { echo "ensure-docker: $*" >&2; }

engine_answers() { docker info >/dev/null 2>&1; }
# as root, the job networks apart and the reverse-path filter on (scripts/job-bridges.sh)
HERE=$(cd "$(dirname "$0")" && pwd)
harden() { [ "$(id -u)" != 0 ] || "$HERE/job-bridges.sh" || true; }

if command -v docker >/dev/null 2>&1 && engine_answers; then
  harden
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  say "no Docker engine answers and I am not root: start dockerd (or set DOCKER_HOST) and retry"
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  say "installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  NEEDRESTART_SUSPEND=1 apt-get install -y -qq docker.io >/dev/null
fi

if [ -n "${DOCKER_HOST:-}" ]; then
  say "DOCKER_HOST=$DOCKER_HOST does not answer; unset it to use the local daemon"
  exit 1
fi

# A killed daemon leaves its pid file (and containerd's) behind; dockerd refuses to start then.
if [ -f "$PIDFILE" ]; then
  pid=$(cat "$PIDFILE" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q dockerd "/proc/$pid/comm" 2>/dev/null; then
    say "dockerd (pid $pid) is running but not answering yet; waiting for it"
  else
    say "removing stale pid file $PIDFILE (pid ${pid:-?} is gone)"
    rm -f "$PIDFILE"
  fi
fi
for f in /var/run/docker/containerd/containerd.pid; do
  if [ -f "$f" ]; then
    pid=$(cat "$f" 2>/dev/null || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then rm -f "$f"; fi
  fi
done

if ! pgrep -x dockerd >/dev/null 2>&1; then
  say "starting dockerd (log: $LOG)"
  mkdir -p "$(dirname "$LOG")"
  nohup setsid dockerd --pidfile "$PIDFILE" >>"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq 1 "$WAIT_SECONDS"); do
  if engine_answers; then
    say "engine ready: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
    harden
    exit 0
  fi
  sleep 1
done
say "dockerd did not answer within ${WAIT_SECONDS}s; last lines of $LOG:"
tail -n 20 "$LOG" >&2 || true
exit 1
