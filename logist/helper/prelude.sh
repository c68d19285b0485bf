set -u
export HOME=/tmp GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0 LC_ALL=C
export GIT_AUTHOR_NAME=logist GIT_AUTHOR_EMAIL=logist@localhost
export GIT_COMMITTER_NAME=logist GIT_COMMITTER_EMAIL=logist@localhost
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES
R=${LOGIST_ROOT:-} TM=${LOGIST_ROOT:-}/tmp  # the container's paths; a test's root of its own
S="$TM/logist-scratch" W="$R/workspace"
UP="git -c safe.directory=* -c core.hooksPath=/dev/null upload-pack"
warn() { printf 'warning: %s\n' "$*" >&2; }
# The workspace's own repository shows the harvest (HEAD on the job branch at the harvest
# commit, its branches, tags and stash as harvested, the index matching the commit), so the next
# step starts clean. No git command ever runs with the step's repository (its config, hooks,
# refs) as its own: a new repository is made with logist's config only, the step's object files
# are moved into it as data, the refs come from the helper's repository, and it replaces .git.
write_back() (
  branch=$1 C=$2 ns=$3
  cd "$W" || exit 20
  new="$W/.git.logist-new" old="$W/.git.logist-old"
  rm -rf "$new" "$old"
  git init -q --bare --template= "$new" >/dev/null || exit 21
  n() { git --git-dir="$new" -c safe.directory='*' -c core.hooksPath=/dev/null \
        -c gc.auto=0 -c maintenance.auto=false -c fetch.writeCommitGraph=false "$@"; }
  if [ -d .git/objects ] && [ ! -L .git ] && [ ! -L .git/objects ]; then
    rm -rf "$new/objects" && mv .git/objects "$new/objects" || exit 21
    # the step's links first (find follows none): no removal by name below may follow one
    find "$new/objects" ! -type f ! -type d -exec rm -f {} + 2>/dev/null
    rm -rf "$new/objects/info/alternates" "$new/objects/info/http-alternates" \
           "$new/objects/info/commit-graph" "$new/objects/info/commit-graphs" \
           "$new/objects/pack/multi-pack-index"
    mkdir -p "$new/objects/info" "$new/objects/pack"
  fi
  n config core.bare false && n config core.logAllRefUpdates true || exit 21
  # more refs than a harvest keeps: the step's own (copied as data into the view) stay
  if [ -s "$TM/logist-over" ] && [ -d "$TM/logist-view/refs" ]; then
    cp -RP "$TM/logist-view/refs/." "$new/refs/" 2>/dev/null
    if [ -f "$TM/logist-view/packed-refs" ]; then cp "$TM/logist-view/packed-refs" "$new/"; fi
    find "$new/refs" ! -type f ! -type d -exec rm -f {} + 2>/dev/null
  fi
  # refs/wb/ of the helper's repository: the job branch at C, the step's other branches, its
  # tags and its stash, as the harvest found them
  n fetch -q --no-tags --no-write-fetch-head --upload-pack "$UP" "$S" "+refs/wb/*:refs/*" \
    || exit 22
  n symbolic-ref HEAD "refs/heads/$branch" || exit 23
  cp "$TM/logist-index" "$new/index" || exit 24
  if [ -e .git ] || [ -L .git ]; then mv .git "$old" || exit 25; fi
  mv "$new" .git || exit 25
  rm -rf "$old"
  exit 0
)
