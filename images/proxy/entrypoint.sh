#!/bin/sh
# The job's proxy: writes $LOGIST_PROXY_CONF (Squid's configuration, made by logist from the
# job's --allow-host patterns) to $LOGIST_PROXY_DIR (default /tmp, the container's only
# writable place) and runs Squid in the foreground on it. Tested without Docker:
# tests/test_proxy_entry.py.
set -eu
dir=${LOGIST_PROXY_DIR:-/tmp}
if [ -z "${LOGIST_PROXY_CONF:-}" ]; then
  echo "logist-proxy: LOGIST_PROXY_CONF is empty" >&2
  exit 2
fi
umask 077
printf '%s\n' "$LOGIST_PROXY_CONF" > "$dir/squid.conf"
unset LOGIST_PROXY_CONF
exec squid -N -f "$dir/squid.conf"
