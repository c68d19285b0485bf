# the job branch, the last harvest's commit, the message, this harvest's nonce, the kept refs'
# namespace, "yes" to write back (a root step), the most bytes of a file, the nonces of
# harvests that never answered
branch=$1 P=$2 msg=$3 nonce=$4 ns=$5 wb=${6:-no} max=${7:-} unfinished=${8:-}
I="$TM/logist-index" V="$TM/logist-view" nl='
'
g() { git --git-dir="$S" -c core.hooksPath=/dev/null -c safe.directory='*' \
      -c gc.auto=0 -c maintenance.auto=false -c core.fsmonitor=false \
      -c core.untrackedCache=false -c core.splitIndex=false -c core.sparseCheckout=false "$@"; }
gw() { g --work-tree="$W" "$@"; }
if [ ! -f "$S/HEAD" ]; then
  git init -q --bare "$S" || exit 10
  echo "$R/trusted/objects" > "$S/objects/info/alternates"
fi
# the last harvest's scratch, in one go (an earlier bundle: no process reads it now)
rm -rf "$S/refs/logist" "$S/refs/wb" "$S/shallow" "$V" "$TM/too-long" "$TM/too-big" \
  "$TM/logist-over" "$TM/logist-flags" "$TM/still-aside" "$TM/as-is" "$TM/as-is-big" "$TM/step-index" \
  "$TM/tracked-ignored" "$TM/tracked-big" "$R/out/"*.bundle
# a shallow source's roots, logist's own: its history ends there (the write-back passes them on)
if [ -f "$R/trusted/shallow" ]; then cp "$R/trusted/shallow" "$S/shallow" || exit 10; fi
# 1. the workspace repository's refs and objects, as data: read through a view of logist's own
#    making (logist's config, copies of HEAD and the refs, links to the step's objects),
#    so no git command reads the step's config; objects logist has not seen are fetched (by
#    id); a ref whose objects cannot be had is skipped
list=
if [ -d "$W/.git" ] && [ ! -L "$W/.git" ] && [ -d "$W/.git/objects" ] \
   && [ ! -L "$W/.git/objects" ] \
   && [ -z "$(find "$W/.git/objects" ! -type f ! -type d -print -quit)" ]; then
  mkdir -p "$V/refs" "$V/objects/info"
  printf '[core]\n\trepositoryformatversion = 0\n\tbare = true\n' > "$V/config"
  set --  # one copy: HEAD and packed-refs that are files, refs that is a directory
  for f in HEAD packed-refs; do
    if [ -f "$W/.git/$f" ] && [ ! -L "$W/.git/$f" ]; then set -- "$@" "$W/.git/$f"; fi
  done
  if [ -d "$W/.git/refs" ] && [ ! -L "$W/.git/refs" ]; then set -- "$@" "$W/.git/refs"; fi
  if [ $# -gt 0 ]; then cp -RP "$@" "$V/" 2>/dev/null; fi
  find "$V" ! -type f ! -type d -exec rm -f {} + 2>/dev/null  # links, FIFOs, devices
  # the step's objects, through links to its fan-out and pack directories (no link or special
  # file among them, checked above): its objects/info is never read (alternates, a chain git
  # follows anywhere: to a FIFO that would hold the harvest, say)
  ln -s "$W/.git/objects/"[0-9a-f][0-9a-f] "$W/.git/objects/pack" "$V/objects/" 2>/dev/null
  [ -f "$V/HEAD" ] || echo "ref: refs/logist-no-head" > "$V/HEAD"
  list=$(cd / && g ls-remote --symref "$V" 2>/dev/null) || list=
fi
[ -n "$list" ] || \
  warn "the workspace's repository cannot be read; committing its files on the last harvest"
# "OID<tab>NAME" lines: not ls-remote's "ref: " ones, nor the peeled "refs/tags/X^{}" (git
# refuses a space, a tab or a ^ in a name)
refs=$(printf '%s\n' "$list" \
       | grep -E '^[^	 ]+	(HEAD|refs/heads/.+|refs/tags/[^^]+|refs/stash)$')
# "OID TYPE" (or "OID missing") once an object the refs name, the step's HEAD's first
have() { printf '%s\n' "$refs" | awk -F'\t' '!seen[$1]++ {print $1}' \
         | g cat-file --batch-check='%(objectname) %(objecttype)'; }
types=$(have)
missing=
case $types in
  *" missing"*) missing=$(printf '%s\n' "$types" | awk '$2 == "missing" && !s[$1]++ {print $1}') ;;
esac
if [ -n "$missing" ]; then
  UPA="git -c core.hooksPath=/dev/null -c uploadpack.allowAnySHA1InWant=true upload-pack"
  fetch() { g fetch -q --no-tags --no-write-fetch-head --upload-pack "$UPA" "$V" \
            "$@" 2>/dev/null; }
  fetch $missing || for oid in $missing; do fetch "$oid" || true; done
  types=$(have)
fi
# the step's HEAD: the one line named HEAD (no other name ends so), a commit logist now has
H=
case $refs$nl in
  *"	HEAD$nl"*)
    H=$refs$nl && H=${H%%"	HEAD$nl"*} && H=${H##*"$nl"}
    case $nl$types$nl in
      *"$nl$H commit$nl"*) ;;
      *) warn "skipped HEAD: its objects are missing"; H= ;;
    esac ;;
esac
# the step's job branch, where it holds a commit logist has
B=
case $refs$nl in
  *"	refs/heads/$branch$nl"*)
    B=$refs$nl && B=${B%%"	refs/heads/$branch$nl"*} && B=${B##*"$nl"}
    case $nl$types$nl in *"$nl$B commit$nl"*) ;; *) B= ;; esac ;;
esac
# 2. the files, as they are, on top of the step's HEAD (or the last harvest); the index is
#    kept between harvests so unchanged files are not read again
start=${H:-$P}
cd "$W" || exit 12
printf '.git.logist-hidden-%s\n/.git.logist-wb-*\n' "$nonce" > "$TM/hidden-exclude"
# what harvests killed before they put it back (their deadline, their runner) set aside: back
# where its name is free, else left out of the harvest (the host names them: 16 hex digits)
if [ -n "$unfinished" ]; then
  set --  # names of these nonces only: another name like it is the step's, walked into
  for u in $unfinished; do
    printf '*.logist-hidden-%s\n' "$u" >> "$TM/hidden-exclude"
    set -- "$@" ${1+-o} -name "*.logist-hidden-$u"
  done
  find . -path ./.git -prune -o -name .git -prune -o \( "$@" \) -prune \
    -exec sh -c 'old=" $1 "; shift; for d; do
        case $old in *" ${d##*.logist-hidden-} "*) ;; *) continue ;; esac
        t=${d%.logist-hidden-*}
        if [ -e "$t" ] || [ -L "$t" ] || ! mv -T -- "$d" "$t"; then
          printf "%s\n" "${d##*.logist-hidden-}" >> "$0"
        fi
      done' "$TM/still-aside" "$unfinished" {} + 2>/dev/null
fi
# repositories nested in the workspace (a clone in a subdirectory): their files are work too, so
# their .git is set aside while the files are added (and put back). Names are NUL-separated data
# (a name may hold a newline) and stay below the workspace (find follows no link). The same
# walk lists the paths git cannot read (over PATH_MAX: git skips them without a word)
unhide() {  # what was set aside (nested repositories' .git, FIFOs named .gitignore) back
  [ -s "$TM/hidden" ] || return 0
  xargs -0 -r sh -c 'n=$1; shift; for d; do mv -T -- "$d.logist-hidden-$n" "$d"; done' \
    unhide "$nonce" < "$TM/hidden"
}
HIDE='n=$1; shift; for d; do mv -T -- "$d" "$d.logist-hidden-$n" && printf "%s\0" "$d"; done'
# so are .gitignore and .gitattributes that are no file (git would wait on a FIFO for ever).
# A path of 4,096 bytes or more (with find's "./", 4,098) git cannot read; it is still sized
find . -regextype posix-extended -path ./.git -prune -o -name .git -prune \
  -exec sh -c "$HIDE" hide "$nonce" {} + -o \( -name .gitignore -o -name .gitattributes \) \
  \( -type p -o -type s -o -type b -o -type c \) -exec sh -c "$HIDE" hide "$nonce" {} + \
  -o -regex '.{4098,}' -fprint "$TM/too-long" -false \
  -o -type f -size +"${max:-9223372036854775806}"c -fprint0 "$TM/too-big" \
  > "$TM/hidden" 2>/dev/null
# A fresh helper borrows the stat data of the workspace's own index (a regular file, read as
# data): one-way read-tree -m keeps the tree's object ids, and stat data only where they match;
# the flags that would make git skip a file (assume-unchanged, skip-worktree) are cleared and
# caches (untracked, split, fsmonitor) are off, so every change is still seen. ls-files -v tags
# a plain entry "H " (a flagged one h, S or s): the two clearing passes (an index rewrite each)
# run only when some entry is not plain, and the borrowed index, already read from "$start",
# is not read again.
unflag() {
  GIT_INDEX_FILE=$I gw ls-files -v > "$TM/logist-flags" || return 1
  if grep -q -v '^H ' "$TM/logist-flags"; then
    GIT_INDEX_FILE=$I gw ls-files -z | GIT_INDEX_FILE=$I gw update-index -z \
      --no-assume-unchanged --stdin 2>/dev/null \
    && GIT_INDEX_FILE=$I gw ls-files -z | GIT_INDEX_FILE=$I gw update-index -z \
      --no-skip-worktree --stdin 2>/dev/null
  fi
}
borrowed=
if [ ! -f "$I" ] && [ -f "$W/.git/index" ] && [ ! -L "$W/.git/index" ] && [ ! -L "$W/.git" ]; then
  cp "$W/.git/index" "$I" 2>/dev/null && GIT_INDEX_FILE=$I gw read-tree -m "$start" 2>/dev/null \
  && unflag && borrowed=yes || rm -f "$I"
fi
[ -n "$borrowed" ] || GIT_INDEX_FILE=$I gw read-tree -m "$start" 2>/dev/null \
  || { rm -f "$I"; GIT_INDEX_FILE=$I g read-tree "$start" 2>/dev/null; } \
  || GIT_INDEX_FILE=$I g read-tree "$P" || { unhide; exit 11; }
refuse_too_big() {  # PATH: over max_object_size, the harvest refused (exit 17: the host says so)
  unhide
  printf 'too-big %s %s\n' "$(stat -c %s -- "$1" 2>/dev/null || echo 0)" "$1" >&2
  exit 17
}
# a file over max_object_size that git would take is refused now, before git reads it all (a
# sparse 100 GB file took the whole harvest deadline); one git ignores is no object
if [ -n "$max" ] && [ -s "$TM/too-big" ]; then
  # of those, the ones add -A would read: untracked and not ignored, or tracked and changed
  big=$(GIT_INDEX_FILE=$I GIT_LITERAL_PATHSPECS=1 xargs -0 -r git --git-dir="$S" \
          -c safe.directory='*' -c core.fsmonitor=false -c core.untrackedCache=false \
          --work-tree="$W" -c core.excludesFile="$TM/hidden-exclude" \
          ls-files -z -o -m --exclude-standard -- < "$TM/too-big" 2>/dev/null \
        | head -z -n 1 | tr -d '\0\n')
  [ -z "$big" ] || refuse_too_big "$big"
fi
ix() { GIT_INDEX_FILE=$I gw -c core.excludesFile="$TM/hidden-exclude" "$@"; }
# one_by_one OPTS: the paths on stdin (NUL-separated), each added alone ("git add OPTS"); a
# regular file git still refuses, reached through no link and within max_object_size, is taken
# as it is (its bytes, not converted: hash-object --no-filters; assume-unchanged until the
# harvest's adds are done, so no later add reads it again) and named in $TM/as-is; one over
# the limit is named in $TM/as-is-big (the harvest is refused). Paths are arguments, never
# code; git's options come from the environment.
one_by_one() {
  GIT_DIR="$S" GIT_WORK_TREE="$W" GIT_INDEX_FILE=$I GIT_LITERAL_PATHSPECS=1 \
  GIT_CONFIG_COUNT=5 GIT_CONFIG_KEY_0=core.hooksPath GIT_CONFIG_VALUE_0=/dev/null \
  GIT_CONFIG_KEY_1=safe.directory GIT_CONFIG_VALUE_1='*' \
  GIT_CONFIG_KEY_2=core.fsmonitor GIT_CONFIG_VALUE_2=false \
  GIT_CONFIG_KEY_3=core.untrackedCache GIT_CONFIG_VALUE_3=false \
  GIT_CONFIG_KEY_4=core.excludesFile GIT_CONFIG_VALUE_4="$TM/hidden-exclude" \
  max="$max" big="$TM/as-is-big" xargs -0 -r sh -c '
    opts=$1; shift
    for p; do
      git add $opts --ignore-errors -- "$p" 2>/dev/null && continue
      [ -f "$p" ] && [ ! -L "$p" ] || continue
      q=$p  # no directory on its path is a link: the bytes are in the workspace
      while [ "$q" != "${q%/*}" ]; do q=${q%/*}; [ -L "$q" ] && continue 2; done
      if [ -n "$max" ] && [ "$(stat -c %s -- "$p")" -gt "$max" ]; then
        printf "%s\n" "$p" >> "$big"; continue
      fi
      oid=$(git hash-object -w --no-filters -- "$p") || continue
      if [ -x "$p" ]; then m=100755; else m=100644; fi
      git update-index --add --cacheinfo "$m,$oid,$p" \
        && git update-index --assume-unchanged -- "$p" && printf "%s\0" "$p"
    done' one-by-one "$1" >> "$TM/as-is" 2>/dev/null
}
# git dies (its index unwritten: every change would be lost) on a file whose
# working-tree-encoding it cannot apply (bytes not in that encoding, a BOM missing or extra):
# each such file is then added alone, and everything else after; a second death refuses the
# harvest
ix add -A --ignore-errors 2>"$TM/add.err"
code=$?
if [ $code -eq 128 ]; then  # git died: nothing of that add is in the index
  ix ls-files -z -o -m --exclude-standard 2>/dev/null \
    | ix check-attr -z --stdin working-tree-encoding 2>/dev/null \
    | sed -z -n 'N;N;/\x00working-tree-encoding\x00\(unspecified\|unset\)$/d
                 s/\x00working-tree-encoding\x00[^\x00]*$//p' | one_by_one -A
  ix add -A --ignore-errors 2>"$TM/add.err"
  code=$?
  if [ $code -eq 128 ]; then
    unhide; echo "git cannot add the files: $(tail -n 1 "$TM/add.err")" >&2; exit 13
  fi
fi
[ $code -eq 0 ] || warn "some files could not be read: $(tail -n 1 "$TM/add.err")"
# files the step's own index tracks that a .gitignore matches (`git add -f dist/app.js`, not
# committed): add -A passes them over as ignored, so they are added by name (the step's index
# read as data; regular files and links inside the workspace only), one by one should git die
if [ -f "$W/.git/index" ] && [ ! -L "$W/.git/index" ] && [ ! -L "$W/.git" ] \
   && cp "$W/.git/index" "$TM/step-index" 2>/dev/null; then
  GIT_INDEX_FILE="$TM/step-index" gw -c core.excludesFile="$TM/hidden-exclude" \
    ls-files -z -c -i --exclude-standard 2>/dev/null \
  | max="$max" big="$TM/tracked-big" xargs -0 -r sh -c 'for p; do
      case "/$p/" in */../*|*/./*|*//*|*/.git/*) continue ;; esac
      if [ -f "$p" ] && [ ! -L "$p" ] && [ -n "$max" ] \
         && [ "$(stat -c %s -- "$p")" -gt "$max" ]; then printf "%s\n" "$p" >> "$big"
      elif [ -f "$p" ] || [ -L "$p" ]; then printf "%s\0" "$p"; fi
    done' tracked > "$TM/tracked-ignored"
  cat "$TM/tracked-big" >> "$TM/as-is-big" 2>/dev/null
  if [ -s "$TM/tracked-ignored" ]; then
    GIT_LITERAL_PATHSPECS=1 ix add -f --ignore-errors --pathspec-from-file="$TM/tracked-ignored" \
      --pathspec-file-nul 2>"$TM/add.err"
    code=$?
    if [ $code -eq 128 ]; then one_by_one -f < "$TM/tracked-ignored"
    elif [ $code -ne 0 ]; then
      warn "some files the step's index tracks could not be read: $(tail -n 1 "$TM/add.err")"
    fi
  fi
fi
[ ! -s "$TM/as-is" ] || ix ls-files -z | ix update-index -z --no-assume-unchanged --stdin \
  2>/dev/null  # the flags of files taken as they are off again, whatever follows
[ ! -s "$TM/as-is-big" ] || refuse_too_big "$(head -n 1 "$TM/as-is-big")"
if [ -s "$TM/as-is" ]; then
  warn "$(tr -cd '\0' < "$TM/as-is" | wc -c) files are taken as they are, not converted from" \
       "their working-tree-encoding (git refused their bytes); the first:" \
       "$(head -z -n 1 "$TM/as-is" | head -c 60 | tr -d '\0')"
fi
if [ -s "$TM/too-long" ]; then
  warn "$(wc -l < "$TM/too-long") paths of 4096 bytes or more are not taken (git cannot" \
       "read them); the first: $(head -c 60 "$TM/too-long")..."
fi
T=$(GIT_INDEX_FILE=$I g --work-tree="$W" write-tree) || { unhide; exit 13; }
unhide
cd /
if [ -z "$H" ]; then set -- "$P"
elif [ "$H" = "$P" ] || g merge-base --is-ancestor "$P" "$H" 2>/dev/null; then set -- "$H"
elif g merge-base --is-ancestor "$H" "$P" 2>/dev/null; then set -- "$P"
else set -- "$P" "$H"; fi
# the step's commits on the job branch when its HEAD went elsewhere (another branch checked
# out, a rebase left mid-way): a parent too, never left behind
if [ -n "$B" ] && [ "$B" != "$H" ] && [ "$B" != "$P" ]; then
  for p in "$@"; do g merge-base --is-ancestor "$B" "$p" 2>/dev/null && B= && break; done
  if [ -n "$B" ]; then set -- "$@" "$B"; fi
fi
printf '%s\n' "$@" > "$TM/logist-have"  # for the write-back: what the step's objects hold
if [ $# -eq 1 ] && [ "$(g rev-parse "$1^{tree}")" = "$T" ]; then C=$1
else
  parents=; for p in "$@"; do parents="$parents -p $p"; done
  C=$(printf '%s\n' "$msg" | g commit-tree "$T" $parents) || exit 14
fi
echo "commit $C"
# 3. other branches, tags and the stash: kept under refs/logist/<ns>/. One awk over all the
#    refs, lists in files, revisions on stdin: linear in the number of refs a step made, and no
#    argument list that could outgrow the kernel's limit
git --git-dir="$R/trusted" -c safe.directory='*' for-each-ref \
  --format='%(objectname) %(refname)' "refs/logist/$ns/" > "$TM/logist-kept" 2>/dev/null
printf '%s\n' "$types" > "$TM/logist-types"
# of those logist could not have, the ones the step's objects do hold (a branch a shallow fetch
# made: its parents are not there): not kept, and said so (the host then keeps the workspace)
printf '%s\n' "$types" | awk '$2 == "missing" {print $1}' \
  | git --git-dir="$V" -c safe.directory='*' cat-file --batch-check='%(objectname) %(objecttype)' \
    2>/dev/null | awk '$2 != "missing" {print $1}' > "$TM/logist-partial"
: > "$TM/logist-w"; : > "$TM/logist-r"; : > "$TM/logist-not"
# the bundle's refs: the job branch when it moved, then what logist does not have
mine() { : > "$TM/logist-b"; [ "$C" = "$P" ] || echo "refs/heads/$branch" > "$TM/logist-b"; }
mine
{ printf 'update refs/heads/%s %s\nupdate refs/wb/heads/%s %s\n' "$branch" "$C" "$branch" "$C"
  printf '%s\n' "$refs" | awk -F'\t' -v ns="$ns" -v branch="$branch" -v max=5000 -v most=655360 \
      -v jb="refs/heads/$branch" \
      -v tf="$TM/logist-types" -v kf="$TM/logist-kept" -v wf="$TM/logist-w" \
      -v rf="$TM/logist-r" -v bf="$TM/logist-b" -v of="$TM/logist-over" -v nf="$TM/logist-not" \
      -v pf="$TM/logist-partial" '
    FILENAME == tf { split($0, p, " "); kind[p[1]] = p[2]; next }
    FILENAME == kf { have[$0] = 1; split($0, q, " "); print "^" q[1] > nf; next }
    FILENAME == pf { partial[$1] = 1; next }
    $2 == "" || $2 == "HEAD" { next }
    # a name the job branch is under, or one under it: git cannot hold both (skipped alone)
    $2 != jb && (index(jb, $2 "/") == 1 || index($2, jb "/") == 1) {  # named 10 times, counted
      if (++clash <= 10) print "skipped " $2 ": it clashes with the job branch " branch > wf
      next }
    { k = ($1 in kind) ? kind[$1] : ""
      if (k == "" || k == "missing") {  # named up to 10 times, then counted
        if ($1 in partial) part++
        if (++gone <= 10) print "skipped " $2 ": its objects are missing" > wf; next }
      short = substr($2, 6); dest = "refs/logist/" ns "/" short
      # the bundle header and the answer stay bounded: in refs, and in the bytes of their
      # names (1,000 names of 1 KB once pushed the answer past what the host reads)
      size = length("ref " $1 " " dest) + 1
      if (n + 1 > max || bytes + size > most) { over++; next }
      n++; bytes += size
      print "ref " $1 " " dest > rf
      print "update " dest " " $1
      if ($2 != "refs/heads/" branch) print "update refs/wb/" short " " $1
      if (!(($1 " " dest) in have)) print dest >> bf }
    END { if (gone > 10) print "skipped " gone - 10 " more refs: their objects are missing" > wf
          if (clash > 10) print "skipped " clash - 10 " more refs that clash with the job branch" > wf
          if (over) print "only " n " branches, tags and stashes are kept (at most " \
            max ", and 640 KiB of names); " over " more are not" > wf
          if (over + clash + part) print over + clash + part > of }  # not kept: the host
          # keeps the workspace for them (a dangling ref holds nothing: not counted)
  ' "$TM/logist-types" "$TM/logist-kept" "$TM/logist-partial" -
} > "$TM/logist-updates"
while IFS= read -r w; do warn "$w"; done < "$TM/logist-w"
g update-ref --stdin < "$TM/logist-updates" 2>/dev/null || {
  warn "some kept refs clash (a/b and a): only the job branch is kept this time"
  rm -rf "$S/refs/logist" "$S/refs/wb"
  g update-ref "refs/heads/$branch" "$C" && g update-ref "refs/wb/heads/$branch" "$C" || exit 16
  # none of the refs is kept now: they count with those the awk left out
  n=$(wc -l < "$TM/logist-r") o=$(cat "$TM/logist-over" 2>/dev/null)
  mine; echo $((n + ${o:-0})) > "$TM/logist-over"; : > "$TM/logist-r"
}
# 4. the bundle: what logist's repository does not have yet
if [ -s "$TM/logist-b" ]; then
  { cat "$TM/logist-b" "$TM/logist-not"; echo "^$P"; } > "$TM/logist-revs"
  if g bundle create -q "$R/out/$nonce.bundle" --stdin < "$TM/logist-revs" 2>"$TM/bundle.err"; then
    echo "bundle $nonce.bundle"
  elif [ -n "$(g rev-list --objects -n 1 --stdin < "$TM/logist-revs" 2>/dev/null)" ]; then
    cat "$TM/bundle.err" >&2; exit 15
  fi
fi
cat "$TM/logist-r"  # last: the host reads a bounded answer, the commit and bundle lines first
if [ -s "$TM/logist-over" ]; then echo "over $(cat "$TM/logist-over")"; fi  # refs not kept
# names of killed harvests that stay set aside (their nonces, for the next harvest)
if [ -s "$TM/still-aside" ]; then sort -u "$TM/still-aside" | sed 's/^/aside /'; fi
# always, whatever the harvest found (a clean tree, the step's own commit, thousands of refs):
# the next step must not meet this step's config or hooks
if [ "$wb" = yes ]; then
  write_back "$branch" "$C" "$ns" || echo git-kept  # the step's .git stays: the host stops
fi
exit 0
