# The gate of the first step of an --allow-host job (logist/gate.py): the step's container
# starts beside its proxy, and this, its entrypoint, holds the step until the proxy listens.
# Run by the image's own /bin/sh, as the step's user: $1 is the gate (a FIFO logist holds
# open, mounted read-only), then the image's entrypoint and the step's command. logist writes
# "go" once the proxy listens, "no" if it did not start; no line (logist gone) is a "no".
# Nothing of the step's, the image's entrypoint included, runs before the line is read.
if read -r logist_gate < "$1" && [ "$logist_gate" = go ]; then
  unset logist_gate
  shift
  exec "$@"
fi
echo "logist: the job's proxy did not start listening: the step did not run" >&2
exit 125
