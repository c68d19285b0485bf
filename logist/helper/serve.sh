R=${LOGIST_ROOT:-} TM=${LOGIST_ROOT:-}/tmp  # the container's paths; a test's root of its own
if [ -n "$1" ]; then printf 'visible %s\n' "$(cat "$R/out/$1" 2>/dev/null)"; fi
S=$2 T=$3
while IFS= read -r nonce && IFS= read -r n; do
  set --
  while [ "$n" -gt 0 ]; do IFS= read -r a || exit 0; set -- "$@" "$a"; n=$((n - 1)); done
  timeout -s KILL "$T" sh -c "$S" run "$@" </dev/null >"$TM/logist-o" 2>"$TM/logist-e"
  rc=$?
  sed 's/^/o /' "$TM/logist-o"
  if [ -s "$TM/logist-e" ]; then head -c 1048576 "$TM/logist-e" | sed 's/^/e /'; fi
  printf '\nend %s %s\n' "$nonce" "$rc"  # on a line of its own, whatever came before
done
exec sleep infinity
