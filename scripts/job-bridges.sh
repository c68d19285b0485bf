#!/usr/bin/env bash
# Keep Docker's job networks apart on the host's firewall (docs/security.md, "Docker's isolation
# lapses while it makes a network"). Docker 20.10 to 27 keep their bridges apart with a jump from
# FORWARD to DOCKER-ISOLATION-STAGE-1 that they delete and insert again each time they make a
# network: in between, a step reaches another job's services (seen: 42 HTTP answers from another
# job's step while 20 networks were made). logist names its job networks' bridges lgj<12 hex>;
# this drops what is routed between one of them and another container bridge (lgj+, docker0,
# br-+, podman+, lgi+, and the names in $LOGIST_OTHER_BRIDGES, e.g. "virbr+ cni+": a Docker
# network with a bridge name of its own, another runtime's), either way, in the mangle table,
# which no engine rewrites. Frames switched within one bridge are not routed and not affected:
# the rules need the physdev match (br_netfilter, loaded here), and none is made without it.
# Also turns on the reverse-path filter on the bridges (scripts/rp-filter.sh). As root;
# idempotent; for iptables and ip6tables, each where it exists. Where it cannot (not root, no
# mangle table, no physdev match) it says so and exits 1.
set -euo pipefail

say() { echo "job-bridges: $*" >&2; }

# rule TOOL MATCH...: in mangle FORWARD once (checked first: running again adds nothing)
rule() {
  local tool=$1
  shift
  "$tool" -w 5 -t mangle -C FORWARD "$@" 2>/dev/null || "$tool" -w 5 -t mangle -I FORWARD "$@"
}

failed=0
# frames switched within one bridge pass FORWARD where br_netfilter is on (Docker loads it; it may
# not have yet): only what is routed is dropped, told apart by the physdev match
modprobe br_netfilter 2>/dev/null || true
routed=(-m physdev ! --physdev-is-bridged)
read -r -a others <<<"lgj+ docker0 br-+ podman+ lgi+ ${LOGIST_OTHER_BRIDGES:-}"
for tool in iptables ip6tables; do
  command -v "$tool" >/dev/null 2>&1 || continue
  for other in "${others[@]}"; do
    if ! rule "$tool" "${routed[@]}" -i lgj+ -o "$other" -j DROP ||
      ! rule "$tool" "${routed[@]}" -i "$other" -o lgj+ -j DROP; then
      failed=1
    fi
  done
done
"$(dirname "$0")/rp-filter.sh" || failed=1
if [ "$failed" = 1 ]; then
  say "could not add every rule: Docker's job networks may reach each other while it makes one (docs/security.md)"
  exit 1
fi
say "firewall: Docker's job networks (lgj+) apart"
