#!/usr/bin/env bash
# Make sure Podman's Docker-compatible API answers, beside (never instead of) the Docker engine.
# Idempotent. As root:
#   - installs Debian's podman, catatonit (Podman's --init; docker.io's tini does not serve it),
#     uidmap and fuse-overlayfs when missing;
#   - writes /etc/containers/containers.conf (marked as logist's; a file of someone else's is
#     left alone) with default_ulimits this host allows: Podman's default nofile=1048576 fails
#     "error setting rlimit" where the hard limit is lower;
#   - sets the host's firewall for Podman's networks (podman_firewall below): frames within one
#     bridge pass (Docker's FORWARD policy DROP would stop them), nothing is routed between two
#     Podman bridges, and logist's internal networks (bridges lgi*) reach neither the host nor
#     anything routed: netavark 1.4 gives neither;
#   - starts the rootful API service on unix:///run/podman/podman.sock (log:
#     $LOGIST_PODMAN_LOG, default /var/log/logist-podman.log), clearing a stale socket, and
#     waits until /version answers.
# With --rootless USER, also for that user: subuid/subgid ranges, storage.conf on overlay
# (fuse-overlayfs; else Podman falls back to vfs, ~10x slower), userns=keep-id (so a step
# running as the user can write its workspace) and the same ulimits in the user's
# containers.conf, an XDG_RUNTIME_DIR, and the user's own API service on a socket the user owns
# ($XDG_RUNTIME_DIR/podman/podman.sock). Prints the URL of the last service started
# (DOCKER_HOST=<it> points the docker SDK, hence logist, at it). dockerd is never touched.
set -euo pipefail

WAIT_SECONDS=${LOGIST_PODMAN_WAIT:-60}
LOG=${LOGIST_PODMAN_LOG:-/var/log/logist-podman.log}
SOCK=/run/podman/podman.sock
MARK="# written by logist's scripts/ensure-podman.sh"
ROOTLESS=""
CHANGED=0

say() { echo "ensure-podman: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rootless) ROOTLESS=${2:?--rootless needs a user name}; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) say "unknown argument $1"; exit 2 ;;
  esac
done

if [ "$(id -u)" != 0 ]; then
  say "run me as root (I install packages and start services)"
  exit 1
fi

missing=()
for pkg in podman catatonit uidmap fuse-overlayfs slirp4netns; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  NEEDRESTART_SUSPEND=1 apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Ulimits the host allows: Podman sets them on every container and fails when they exceed the
# hard limits of the process starting it.
hard() { local v; v=$(ulimit -H "$1"); [ "$v" = unlimited ] && v=$2; [ "$v" -lt "$2" ] && echo "$v" || echo "$2"; }
NOFILE=$(hard -n 20000)
NPROC=$(hard -u 32768)

conf_body() {  # conf_body [extra lines for [containers]]
  cat <<EOF
$MARK
# Podman's defaults do not fit this host: nofile=1048576 exceeds the hard limit
# ("error setting rlimit"). Remove this file (or the marker line) to manage it yourself.
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
EOF
  [ $# -gt 0 ] && printf '%s\n' "$@"
  cat <<EOF
[engine]
# an exec session's conmon waits this long for its exit code to be read (default 300 s: the
# harvest helper's execs left ~180 conmons, ~290 MiB, alive for 5 minutes after a test run)
exit_command_delay = 10
EOF
}

write_conf() {  # write_conf FILE OWNER [extra lines]: only a file that is absent or ours
  local file=$1 owner=$2; shift 2
  if [ -f "$file" ] && ! grep -qF "$MARK" "$file"; then
    say "$file is not logist's: left as is (it needs default_ulimits the host allows${1:+ and $*})"
    return 0
  fi
  local want; want=$(conf_body "$@")
  if [ "$(cat "$file" 2>/dev/null)" != "$want" ]; then
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$want" >"$file"
    [ "$owner" = root ] || chown -R "$owner:" "$(dirname "$file")"
    say "wrote $file"
    CHANGED=1
  fi
}

# api_answers SOCKET [USER]: whether /version answers on SOCKET.
api_answers() {
  local sock=$1 user=${2:-}
  local cmd=(curl -fsS --max-time 5 --unix-socket "$sock" http://d/version)
  command -v curl >/dev/null 2>&1 || cmd=(python3 -c "
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
s.sendall(b'GET /version HTTP/1.0\r\nHost: d\r\n\r\n')
sys.exit(0 if s.recv(64).split()[1:2] == [b'200'] else 1)" "$sock")
  if [ -n "$user" ]; then
    (cd / && runuser -u "$user" -- "${cmd[@]}") >/dev/null 2>&1
  else
    "${cmd[@]}" >/dev/null 2>&1
  fi
}

# start_service SOCKET LOG [USER]: the API service on SOCKET unless it answers already.
start_service() {
  local sock=$1 log=$2 user=${3:-} pidfile="$1.logist-pid"
  if [ "$CHANGED" = 1 ] && [ -f "$pidfile" ]; then
    # a service of ours started before its configuration changed: started anew
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && grep -qE "podman|runuser" "/proc/$pid/comm" 2>/dev/null; then
      say "restarting the service on $sock (its configuration changed)"
      kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
  fi
  CHANGED=0
  if api_answers "$sock" "$user"; then
    return 0
  fi
  if [ -S "$sock" ] || [ -e "$sock" ]; then
    # A socket nobody answers on (a killed service) would make the new one fail to bind.
    if command -v fuser >/dev/null 2>&1 && fuser "$sock" >/dev/null 2>&1; then
      say "$sock is held by a process that does not answer yet; waiting for it"
    else
      say "removing stale socket $sock"
      rm -f "$sock"
    fi
  fi
  if [ ! -e "$sock" ]; then
    say "starting the Podman API service on unix://$sock (log: $log)"
    mkdir -p "$(dirname "$log")"
    if [ -n "$user" ]; then
      touch "$log" && chown "$user:" "$log"
      (cd / && runuser -u "$user" -- mkdir -p "$(dirname "$sock")")
      (cd / && exec setsid runuser -u "$user" -- env XDG_RUNTIME_DIR="$XDG" HOME="$HOME_DIR" \
        podman system service --time=0 "unix://$sock" >>"$log" 2>&1 </dev/null) &
    else
      mkdir -p "$(dirname "$sock")"
      setsid podman system service --time=0 "unix://$sock" >>"$log" 2>&1 </dev/null &
    fi
    echo $! >"$pidfile"
  fi
  for _ in $(seq 1 "$WAIT_SECONDS"); do
    if api_answers "$sock" "$user"; then
      return 0
    fi
    sleep 1
  done
  say "the Podman API service did not answer within ${WAIT_SECONDS}s; last lines of $log:"
  tail -n 20 "$log" >&2 || true
  exit 1
}

# rule TOOL TABLE CHAIN MATCH...: the rule, inserted at the top of the chain unless already there
rule() {
  local tool=$1 table=$2 chain=$3
  shift 3
  "$tool" -t "$table" -C "$chain" "$@" 2>/dev/null || "$tool" -t "$table" -I "$chain" "$@"
}

# unrule TOOL TABLE CHAIN MATCH...: the rule gone, wherever it is
unrule() {
  local tool=$1 table=$2 chain=$3
  shift 3
  while "$tool" -t "$table" -D "$chain" "$@" 2>/dev/null; do :; done
}

# drops DO TOOL TABLE BETWEEN: the drops below made (DO=rule) or removed (DO=unrule) in TABLE;
# those between Podman's and Docker's bridges in its chain BETWEEN (the caller's `routed`: the
# match of what is routed, not switched within one bridge)
drops() {
  local do=$1 tool=$2 table=$3 between=$4 bridge
  "$do" "$tool" "$table" FORWARD "${routed[@]}" -i podman+ -o podman+ -j DROP
  "$do" "$tool" "$table" FORWARD "${routed[@]}" -i lgi+ -j DROP
  "$do" "$tool" "$table" FORWARD "${routed[@]}" -o lgi+ -j DROP
  "$do" "$tool" "$table" INPUT -i lgi+ -j DROP
  for bridge in docker0 br-+; do
    "$do" "$tool" "$table" "$between" -i podman+ -o "$bridge" -j DROP
    "$do" "$tool" "$table" "$between" -i "$bridge" -o podman+ -j DROP
  done
}

# The host's firewall for Podman's networks (docs/podman.md, "Networks"), for iptables and
# ip6tables, each where it exists. "routed" below: not a frame switched within one bridge
# (those go through the FORWARD chain only where br_netfilter is on).
#   - Docker's FORWARD policy DROP also drops frames within a Podman bridge that has no rule of
#     netavark's (its internal networks): frames switched within one Podman bridge (podman*,
#     and logist's internal ones, lgi*) are accepted (filter table);
#   - netavark 1.4's `isolate` does not reliably keep its networks apart (its drop rules can
#     come after its accept rules): nothing is routed from one Podman bridge to another, as
#     Docker keeps its own bridges apart;
#   - it keeps the host's addresses (the gateway, an IPv6 link-local) on an internal network's
#     bridge: nothing from logist's internal networks (lgi*) reaches the host itself or is
#     routed anywhere; their only way out is the job's proxy;
#   - where Docker runs too, nothing is routed between a Podman bridge and a Docker one
#     (docker0, br-*), either way: Docker's and Podman's jobs apart.
# The drops are in the mangle table, which the kernel walks before the filter table: in the
# filter table, netavark inserts its own jump at the top of FORWARD the first time it sets up a
# network, above rules made before it (seen on a fresh machine: two jobs reached each other),
# and Docker does the same with its chains.
podman_firewall() {
  local tool proc routed bridged
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null 2>&1 || continue
    proc=/proc/sys/net/bridge/bridge-nf-call-$tool
    routed=()
    if [ "$(cat "$proc" 2>/dev/null || echo 0)" = 1 ]; then
      routed=(-m physdev ! --physdev-is-bridged)
      for bridged in podman+ lgi+; do
        rule "$tool" filter FORWARD -m physdev --physdev-is-bridged -i "$bridged" -o "$bridged" -j ACCEPT
      done
    fi
    drops unrule "$tool" filter DOCKER-USER  # where earlier versions of this script made them
    drops rule "$tool" mangle FORWARD
  done
  "$(dirname "$0")/rp-filter.sh" || true  # no spoofed source enters the host from a bridge
  say "firewall: Podman's networks apart, logist's internal ones apart from the host"
}

write_conf /etc/containers/containers.conf root
podman_firewall
start_service "$SOCK" "$LOG"
URL="unix://$SOCK"
say "rootful Podman $(podman version --format '{{.Server.Version}}' 2>/dev/null) ready at $URL"

if [ -n "$ROOTLESS" ]; then
  id "$ROOTLESS" >/dev/null 2>&1 || { say "no user $ROOTLESS"; exit 1; }
  uid=$(id -u "$ROOTLESS")
  HOME_DIR=$(getent passwd "$ROOTLESS" | cut -d: -f6)
  [ -d "$HOME_DIR" ] || { say "$ROOTLESS has no home directory ($HOME_DIR)"; exit 1; }
  # subordinate ids: a free 65536-range after every range already given
  for f in /etc/subuid /etc/subgid; do
    touch "$f"
    if ! grep -q "^$ROOTLESS:" "$f"; then
      start=$(awk -F: 'BEGIN {m = 100000} {e = $2 + $3; if (e > m) m = e} END {print m}' "$f")
      echo "$ROOTLESS:$start:65536" >>"$f"
      say "$f: $ROOTLESS:$start:65536"
    fi
  done
  XDG=/run/user/$uid
  if [ ! -d "$XDG" ]; then
    mkdir -p "$XDG"
    chown "$ROOTLESS:" "$XDG"
    chmod 700 "$XDG"
  fi
  cfg=$HOME_DIR/.config/containers
  (cd / && runuser -u "$ROOTLESS" -- mkdir -p "$cfg")
  write_conf "$cfg/containers.conf" "$ROOTLESS" 'userns = "keep-id"'
  storage="$cfg/storage.conf"
  if [ ! -f "$storage" ] || grep -qF "$MARK" "$storage"; then
    want="$MARK
# native overlay (kernel >= 5.13); fuse-overlayfs would need /dev/fuse, not usable here
[storage]
driver = \"overlay\""
    if [ "$(cat "$storage" 2>/dev/null)" != "$want" ]; then
      printf '%s\n' "$want" >"$storage"
      chown "$ROOTLESS:" "$storage"
      CHANGED=1
      say "wrote $storage"
    fi
  fi
  driver=$(runuser -u "$ROOTLESS" -- env XDG_RUNTIME_DIR="$XDG" HOME="$HOME_DIR" \
    sh -c 'cd / && podman info --format "{{.Store.GraphDriverName}}"' 2>/dev/null || true)
  if [ "$driver" != overlay ]; then
    say "rootless storage driver is '${driver:-?}', not overlay (a store made earlier on vfs?" \
      "'podman system reset' as $ROOTLESS starts it anew)"
  fi
  mp="$HOME_DIR/.local/share/containers/storage/overlay/.has-mount-program"
  if [ "$(cat "$mp" 2>/dev/null)" = true ] &&
     ! (cd / && runuser -u "$ROOTLESS" -- test -r /dev/fuse -a -w /dev/fuse); then
    say "$ROOTLESS's store was made with fuse-overlayfs, which cannot open /dev/fuse here:" \
      "'podman system reset' as $ROOTLESS starts it anew on native overlay"
  fi
  start_service "$XDG/podman/podman.sock" "$HOME_DIR/.logist-podman.log" "$ROOTLESS"
  URL="unix://$XDG/podman/podman.sock"
  say "rootless Podman for $ROOTLESS ready at $URL"
fi
echo "$URL"
