R=${LOGIST_ROOT:-} TM=${LOGIST_ROOT:-}/tmp  # the container's paths; a test's root of its own
printf 'visible %s\n' "$(cat "$R/out/$1" 2>/dev/null)"; exec sleep infinity
