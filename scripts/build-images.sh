#!/usr/bin/env bash
# Build logist's images: logist/busybox:latest, logist/step:latest, logist/logist:latest,
# logist/proxy:latest (a job's egress proxy: Squid) and logist/node:latest (a Docker engine in
# a container: the multi-engine tests' nodes).
# Idempotent: an image that exists and was built from the same inputs (a hash of its Dockerfile
# and sources, kept in its label logist.source) is skipped unless --rebuild is given.
# The base of the Debian images is $BASE_IMAGE (default debian:bookworm-slim). When it is not
# present and cannot be pulled (no registry), a minimal Debian rootfs is made with debootstrap
# from the mirror the machine's apt sources name, imported as logist/base:<suite>, and used.
set -euo pipefail
cd "$(dirname "$0")/.."

REBUILD=0
for arg in "$@"; do
  case "$arg" in
    --rebuild) REBUILD=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "build-images: unknown argument $arg" >&2; exit 2 ;;
  esac
done

BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
PYTHON=${PYTHON:-python3}
SUITE=${DEBIAN_SUITE:-$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-bookworm}")}
SUITE=${SUITE:-bookworm}
LOCAL_BASE="logist/base:$SUITE"

say() { echo "build-images: $*" >&2; }
have() { docker image inspect "$1" >/dev/null 2>&1; }
source_of() { docker image inspect -f '{{index .Config.Labels "logist.source"}}' "$1" 2>/dev/null; }
inputs() { cat "$@" | sha256sum | cut -c1-16; }  # a hash of the files an image is made of
wanted() {  # wanted TAG HASH
  [ "$REBUILD" = 1 ] || ! have "$1" || [ "$(source_of "$1")" != "$2" ]
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

apt_install() {
  as_root apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 as_root apt-get install -y -qq "$@" >/dev/null
}

# The Debian mirror named by the apt sources (deb822 or one-line format).
debian_mirror() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
          awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}')
  fi
  [ -n "$uri" ] || { say "no Debian mirror found in the apt sources"; return 1; }
  echo "$uri"
}

make_local_base() {
  if have "$LOCAL_BASE" && [ "$REBUILD" = 0 ]; then return 0; fi
  command -v debootstrap >/dev/null || apt_install debootstrap
  local mirror rootfs
  mirror=$(debian_mirror)
  rootfs=$(mktemp -d /tmp/logist-rootfs.XXXXXX)
  say "no registry: making $LOCAL_BASE with debootstrap ($SUITE) from the apt sources' mirror"
  as_root debootstrap --variant=minbase --include=git,ca-certificates,python3,python3-venv \
    "$SUITE" "$rootfs" "$mirror" >/tmp/logist-debootstrap.log 2>&1 || {
      tail -n 20 /tmp/logist-debootstrap.log >&2; say "debootstrap failed"; return 1; }
  as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  as_root tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
  as_root rm -rf "$rootfs"
  say "imported $LOCAL_BASE"
}

resolve_base() {
  if have "$BASE_IMAGE"; then echo "$BASE_IMAGE"; return; fi
  if timeout 120 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then echo "$BASE_IMAGE"; return; fi
  make_local_base
  echo "$LOCAL_BASE"
}

build() {  # build TAG CONTEXT [docker build args...]
  local tag=$1 ctx=$2 log
  shift 2
  log=$(mktemp /tmp/logist-build.XXXXXX)
  say "building $tag"
  DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$@" "$ctx" >/dev/null 2>"$log" || {
    cat "$log" >&2; rm -f "$log"; say "building $tag failed"; return 1; }
  rm -f "$log"
}

# The images made from the base are built side by side (each mostly waits on the mirror);
# `built` waits for them all and fails if one did.
BUILDS=()
built() {
  local pid rc=0
  for pid in "${BUILDS[@]}"; do wait "$pid" || rc=1; done
  BUILDS=()
  return "$rc"
}

dpkg -s busybox-static >/dev/null 2>&1 || apt_install busybox-static
BUSYBOX_SRC=$(inputs images/busybox/Dockerfile /bin/busybox)
STEP_SRC=$(inputs images/step/Dockerfile)
NODE_SRC=$(inputs images/node/Dockerfile images/node/entrypoint.sh)
PROXY_SRC=$(inputs images/proxy/Dockerfile images/proxy/entrypoint.sh)
LOGIST_SRC=$(inputs Dockerfile pyproject.toml logist/*.py)

if wanted logist/busybox:latest "$BUSYBOX_SRC"; then
  ctx=$(mktemp -d /tmp/logist-busybox.XXXXXX)
  cp images/busybox/Dockerfile "$ctx/" && cp /bin/busybox "$ctx/busybox"
  build logist/busybox:latest "$ctx" --label "logist.source=$BUSYBOX_SRC"
  rm -rf "$ctx"
fi

if wanted logist/step:latest "$STEP_SRC" || wanted logist/logist:latest "$LOGIST_SRC" ||
   wanted logist/node:latest "$NODE_SRC" || wanted logist/proxy:latest "$PROXY_SRC"; then
  base=$(resolve_base)
  if wanted logist/logist:latest "$LOGIST_SRC"; then
    rm -rf build/wheels
    "$PYTHON" -m pip wheel -q --disable-pip-version-check -w build/wheels . 2>&1 |
      grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    ls build/wheels/logist-*.whl >/dev/null
    build logist/logist:latest . --build-arg "BASE_IMAGE=$base" \
      --label "logist.source=$LOGIST_SRC" &
    BUILDS+=($!)
  fi
  if wanted logist/step:latest "$STEP_SRC"; then
    build logist/step:latest images/step --build-arg "BASE_IMAGE=$base" \
      --label "logist.source=$STEP_SRC" &
    BUILDS+=($!)
  fi
  if wanted logist/proxy:latest "$PROXY_SRC"; then  # apt-get installs squid from the mirror
    build logist/proxy:latest images/proxy --build-arg "BASE_IMAGE=$base" \
      --label "logist.source=$PROXY_SRC" &
    BUILDS+=($!)
  fi
  if wanted logist/node:latest "$NODE_SRC"; then  # apt-get installs docker.io from the mirror
    build logist/node:latest images/node --build-arg "BASE_IMAGE=$base" \
      --label "logist.source=$NODE_SRC" &
    BUILDS+=($!)
  fi
  built || { say "an image failed to build"; exit 1; }
fi
say "images ready: $(docker images --format '{{.Repository}}:{{.Tag}}' | grep '^logist/' | sort | tr '\n' ' ')"
