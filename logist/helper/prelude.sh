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
# Whatever fails, the step's repository never stays: made again from the harvest alone (the
# step's other objects and refs dropped), else removed (the next step finds none).
write_back() {
  wb_once "$1" "$2" "$3" keep && return 0
  rc=$?
  if wb_once "$1" "$2" "$3" drop; then
    warn "the workspace's repository was made again from the harvest alone (exit $rc):" \
         "objects and refs of the step's that were not harvested are gone"
    return 0
  fi
  (cd "$W" && rm -rf .git) 2>/dev/null
  if [ -e "$W/.git" ] || [ -L "$W/.git" ]; then return "$rc"; fi
  warn "the workspace's repository could not be updated (exit $rc): removed, the next step finds none"
}
wb_once() (
  branch=$1 C=$2 ns=$3 mode=$4
  cd "$W" || exit 20
  # what the step made read-only (chmod 555 .git) is its user's to open again: a write-back
  # that failed would leave the step's config and hooks to the next step (links: not followed;
  # root too: a file system may squash it)
  chmod u+rwx . 2>/dev/null
  if [ -d .git ] && [ ! -L .git ]; then chmod -R u+rwX .git 2>/dev/null; fi  # -R follows none
  # logist's scratch: names a step does not choose (mktemp), one reserved prefix; a killed
  # write-back's are removed here and never harvested
  for x in "$W"/.git.logist-wb-*; do
    if [ -e "$x" ] || [ -L "$x" ]; then rm -rf "$W"/.git.logist-wb-* 2>/dev/null; break; fi
  done
  new=$(mktemp -d "$W/.git.logist-wb-XXXXXXXX") || exit 21
  old=$new-old  # made by the move below: the prefix is logist's, emptied above
  moved= && : > "$TM/logist-own-refs"
  # a failure puts the step's repository back as it was: its objects, nothing of logist's
  fail() {
    if [ -n "$moved" ] && [ ! -e .git/objects ] && [ ! -L .git/objects ]; then
      mv "$new/objects" .git/objects
    fi
    if [ -d "$new/modules" ] && [ ! -e .git/modules ] && [ ! -L .git/modules ]; then
      mv -T "$new/modules" .git/modules
    fi
    rm -rf "$new" "$old"
    exit "$1"
  }
  n() { git --git-dir="$new" -c safe.directory='*' -c core.hooksPath=/dev/null \
        -c gc.auto=0 -c maintenance.auto=false -c fetch.writeCommitGraph=false "$@"; }
  # more refs than a harvest keeps: the step's own stay, those git can read (a name git
  # refuses is left out), listed from the view of them the harvest made, as data
  if [ "$mode" = keep ] && [ -s "$TM/logist-over" ] && [ -d "$TM/logist-view/refs" ]; then
    git --git-dir="$TM/logist-view" -c safe.directory='*' for-each-ref \
      --format='%(objectname) %(refname)' > "$TM/logist-own-refs" 2>/dev/null \
      || : > "$TM/logist-own-refs"
  fi
  if [ "$mode" = keep ] && [ -d .git/objects ] && [ ! -L .git ] && [ ! -L .git/objects ]; then
    mv -T .git/objects "$new/objects" || fail 21
    moved=yes
    # the step's links first (find follows none): no removal by name below, and no git, may
    # follow one
    find "$new/objects" ! -type f ! -type d -exec rm -f {} + 2>/dev/null
    rm -rf "$new/objects/info/alternates" "$new/objects/info/http-alternates" \
           "$new/objects/info/commit-graph" "$new/objects/info/commit-graphs" \
           "$new/objects/pack/multi-pack-index"
  fi
  # around the objects moved in, if any (git makes objects/info and objects/pack if missing)
  git init -q --bare --template= "$new" >/dev/null || fail 21
  # what the step's objects already hold (the harvest's parents), as the branch the fetch
  # moves: the fetch sends the rest only, not the whole history (before the reflog is on)
  if [ -n "$moved" ] && [ -s "$TM/logist-have" ]; then
    while IFS= read -r h; do
      n update-ref "refs/heads/$branch" "$h" 2>/dev/null && break
    done < "$TM/logist-have"
  fi
  # a work tree's repository, made from git's own probe (filemode) without a git per key. A
  # repository nested in the workspace under a gitlink: git status, diff and commit at the top
  # would run git in it, with its config (an fsmonitor); they look at its HEAD only
  cfg=
  while IFS= read -r line; do
    case $line in
      *bare\ =*) line='	bare = false
	logallrefupdates = true' ;;
    esac
    cfg="$cfg$line
"
  done < "$new/config" || fail 21
  printf '%s[diff]\n\tignoreSubmodules = dirty\n' "$cfg" > "$new/config" || fail 21
  if [ -s "$TM/logist-own-refs" ]; then cp "$TM/logist-own-refs" "$new/packed-refs" || fail 21; fi
  # refs/wb/ of the helper's repository: the job branch at C, the step's other branches, its
  # tags and its stash, as the harvest found them
  # a shallow source's roots, logist's own (a fetch would not say them when the step's refs
  # already reach them)
  if [ -f "$S/shallow" ]; then cp "$S/shallow" "$new/shallow" || fail 22; fi
  # (whatever branch git's own HEAD names: a step's "master" is fetched like any other)
  # (a reflog for every ref: the stash's is its list)
  n -c core.logAllRefUpdates=always fetch -q --no-tags --no-write-fetch-head --update-head-ok \
    --no-recurse-submodules --upload-pack "$UP" "$S" "+refs/wb/*:refs/*" || fail 22
  # the fetch sent what the step's objects lacked from what they claim to hold: the trees the
  # refs name must be whole (an object the step deleted fails this: made again from the
  # harvest alone). The files' history is not walked: its cost would grow with the history
  if [ -n "$moved" ]; then n rev-list --objects --no-walk --all --quiet 2>/dev/null || fail 22; fi
  printf 'ref: refs/heads/%s\n' "$branch" > "$new/HEAD" || fail 23
  cp "$TM/logist-index" "$new/index" || fail 24
  # the repositories of the step's submodules (.git/modules) are its own, like one nested in
  # the work tree (git at the top looks at their HEAD only: diff.ignoreSubmodules)
  if [ -d .git/modules ] && [ ! -L .git ] && [ ! -L .git/modules ]; then
    mv -T .git/modules "$new/modules" || fail 25
  fi
  if [ -e .git ] || [ -L .git ]; then mv -T .git "$old" || fail 25; fi
  mv -T "$new" .git || { mv -T "$old" .git; fail 25; }
  rm -rf "$old"
  exit 0
)
