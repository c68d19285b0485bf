#!/usr/bin/env bash
# The host's reverse-path filter on the engines' bridges (docs/security.md, "Spoofed sources"):
# a packet that enters the host (not one switched within a bridge) on a bridge must come from an
# address routed through that bridge. Without it a step granted NET_RAW sends the host an ICMP
# echo request with another job's address as its source, and the host's reply carries the step's
# data to that job, on any network, either engine. Sets net.ipv4.conf.default.rp_filter=1 (the
# bridges made from now on) and rp_filter=1 on the bridges there now: docker0, br-*, podman*, lgi*.
# The host's other interfaces keep theirs. As root; idempotent.
set -euo pipefail
echo 1 >/proc/sys/net/ipv4/conf/default/rp_filter
for conf in /proc/sys/net/ipv4/conf/*; do
  case "${conf##*/}" in
    docker0 | br-* | podman* | lgi*) echo 1 >"$conf/rp_filter" ;;
  esac
done
