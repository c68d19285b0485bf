#!/bin/sh
# The entrypoint of logist/node: make the cgroup v1 controllers writable (a container sees them
# read-only), clear what a previous run of this container left in /run, then exec dockerd under tini (it reaps orphans)
# (without TLS: with TLS unset dockerd 20.10 waits 15 s before it listens on tcp).
# Extra arguments are given to dockerd.
set -eu
if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ]; then
  # cgroup v1: one mount per controller (cpu, memory, pids, name=systemd, ...)
  awk '$3 == "cgroup" && $2 ~ "^/sys/fs/cgroup/" {print $2}' /proc/self/mounts |
    while read -r dir; do
      mount -o remount,bind,rw "$dir" || echo "logist-node: cannot make $dir writable" >&2
    done
fi
# a stopped and restarted node keeps its filesystem: the old pid files would stop dockerd
rm -rf /run/docker.pid /run/docker /run/containerd /run/docker.sock
exec tini -- dockerd --tls=false -H tcp://0.0.0.0:2375 -H unix:///var/run/docker.sock \
  --storage-driver overlay2 --data-root /var/lib/docker "$@"
