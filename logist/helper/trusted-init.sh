set -eu
R=${LOGIST_ROOT:-} TM=${LOGIST_ROOT:-}/tmp  # the container's paths; a test's root of its own
export HOME=/tmp GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null LC_ALL=C
mkdir -p "$R/out" && chmod 700 "$R/out"
rm -rf "$R/trusted"
git init -q --bare --template= "$R/trusted"
if [ -f "$TM/logist-trusted.shallow" ]; then mv "$TM/logist-trusted.shallow" "$R/trusted/shallow"; fi
git --git-dir="$R/trusted" -c core.hooksPath=/dev/null fetch -q --no-tags --no-write-fetch-head \
  "$TM/logist-trusted.bundle" '+refs/*:refs/*'
rm -f "$TM/logist-trusted.bundle"
