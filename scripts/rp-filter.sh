#!/usr/bin/env bash
# The host's reverse-path filter on the engines' bridges (docs/security.md, "Spoofed sources"):
# a packet that enters the host (not one switched within a bridge) on a bridge must come from an
# address routed through that bridge. Without it a step granted NET_RAW sends the host an ICMP
# echo request with another job's address as its source, and the host's reply carries the step's
# data to that job, on any network, either engine. Sets net.ipv4.conf.default.rp_filter=1 (the
# bridges made from now on) and rp_filter=1 on the bridges there now: docker0, br-*, lgj*, podman*, lgi*.
# The host's other interfaces keep theirs. As root; idempotent.
# Where it cannot (not root, a read-only /proc/sys) it says so and exits 1.
set -euo pipefail
on() {
  echo 1 2>/dev/null >"$1/rp_filter" || {
    echo "rp-filter: could not turn on the reverse-path filter on the bridges ($1; docs/security.md)" >&2
    exit 1
  }
}
on /proc/sys/net/ipv4/conf/default
for conf in /proc/sys/net/ipv4/conf/*; do
  case "${conf##*/}" in
    docker0 | br-* | lgj* | podman* | lgi*) on "$conf" ;;
  esac
done
