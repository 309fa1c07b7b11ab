#!/usr/bin/env bash
# Builds a workload image from pinned Debian packages into an OCI archive, without a container
# engine: `apt-get download` of exact versions, `dpkg-deb -x` of each into a root filesystem (no
# maintainer scripts run), merged /usr, /etc/passwd and /etc/group, then hack/mkoci.py.
#   hack/debian-image.sh NAME           build NAME (a line of hack/debian-images.txt), cached
#   hack/debian-image.sh --relock NAME  resolve NAME's packages to today's versions first
# The archive is $QUORATE_CACHE/images/NAME-<key>.tar (workload_archive NAME, hack/lib.sh), keyed
# by NAME's line, its pin and its locked packages; the image is `workload_image NAME`; the .deb
# files stay in $QUORATE_CACHE/debs. hack/images.sh builds every image of the table and imports it.
#
# hack/debian-images.lock pins every package of every image: NAME's own packages at its pin
# (hack/versions.env), the base packages and the run-time dependencies of all of them (Depends and
# Pre-Depends, recursively, first installable alternative, without the maintainer-script helpers
# below) at the versions apt offered when they were resolved. They are resolved again when
# NAME's line or pin changes, or with --relock (when the archive no longer serves a locked version).
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"

# Every image has a shell and the tools of a hook script.
BASE_PACKAGES=(dash coreutils sed grep)
# Needed by maintainer scripts, init systems or package management only, never by a program in
# a container; "Depends: dpkg | install-info" and the like are satisfied by them.
COMMON_EXCLUDES=(adduser debconf debconf-2.0 debianutils dpkg init-system-helpers install-info
  lsb-base passwd perl-base sysvinit-utils ucf usr-is-merged usrmerge)
PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LOCK="$HACK/debian-images.lock"
DEBS="$QUORATE_CACHE/debs"

relock=0
if [[ "${1:-}" == --relock ]]; then relock=1; shift; fi
name="${1:-}"
[[ -n "$name" && $# -eq 1 ]] || die "usage: hack/debian-image.sh [--relock] NAME (an image of hack/debian-images.txt)"
pin_var="$(debian_image_field "$name" pin)"
pin="${!pin_var:-}"
[[ -n "$pin" ]] || die "image $name: pin '$pin_var' is not set in hack/versions.env"
IFS=, read -ra own <<<"$(debian_image_field "$name" packages)"
((${#own[@]})) || die "image $name: no packages= in hack/debian-images.txt"
IFS=, read -ra excludes <<<"$(debian_image_field "$name" exclude)"
excludes+=("${COMMON_EXCLUDES[@]}")

for c in apt-get apt-cache dpkg-deb; do need_cmd "$c" "it builds from Debian 12 (bookworm) packages: run it on Debian 12"; done
mkdir -p "$QUORATE_CACHE/images" "$DEBS"
exec 9>"$QUORATE_CACHE/images/.debian-image.lock"
flock 9

# What the lock of NAME was resolved from.
spec="$({ awk -v n="$name" '$1 == n' "$HACK/debian-images.txt"
  printf '%s\n' "$pin" "${BASE_PACKAGES[*]}" "${excludes[*]}"; } | sha256sum | cut -c1-12)"

# apt: the host's, on Debian 12; elsewhere (kind users, an Ubuntu CI runner) or with
# DEBIAN_IMAGE_APT=private, a configuration of our own in $QUORATE_CACHE/apt with bookworm's
# sources, its own lists and an empty dpkg status (no host package counts as installed).
APT=(-o APT::Sandbox::User=root)
LISTS=/var/lib/apt/lists
if [[ "${DEBIAN_IMAGE_APT:-}" == private ]] || ! grep -qx 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -f "$keyring" ]] || die "$keyring is missing: install the package debian-archive-keyring"
  APT_DIR="$QUORATE_CACHE/apt"
  LISTS="$APT_DIR/lists"
  mkdir -p "$LISTS/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR"/etc/{apt.conf.d,preferences.d,sources.list.d,trusted.gpg.d}
  touch "$APT_DIR/status"
  {
    echo "deb [signed-by=$keyring] http://deb.debian.org/debian bookworm main"
    echo "deb [signed-by=$keyring] http://deb.debian.org/debian bookworm-updates main"
    echo "deb [signed-by=$keyring] http://deb.debian.org/debian-security bookworm-security main"
  } >"$APT_DIR/etc/sources.list"
  APT+=(-o Dir::Etc="$APT_DIR/etc" -o Dir::State::Lists="$LISTS" -o Dir::State::status="$APT_DIR/status"
    -o Dir::Cache="$APT_DIR/cache" -o APT::Architecture=amd64 -o APT::Architectures=amd64)
fi
apt_update() { apt-get "${APT[@]}" update -qq >/dev/null; }
apt_lists() {
  compgen -G "$LISTS/*_Packages*" >/dev/null && return 0
  log "apt has no package lists ($LISTS): apt-get update"
  apt_update || die "apt-get update failed"
}

# resolve: NAME's packages with their versions, one "PKG VERSION" a line, sorted.
resolve() {
  local -A version=() excluded=() cand=()
  local level=() next=() pending=() p x
  for x in "${excludes[@]}"; do excluded[$x]=1; done
  for p in "${own[@]}"; do version[$p]=$pin; level+=("$p=$pin"); done
  # candidates PKG...: fill cand[] from one `apt-cache policy` (apt-cache costs ~1 s a call here).
  candidates() {
    local pkg="" line
    while IFS= read -r line; do
      if [[ "$line" =~ ^([^[:space:]]+):$ ]]; then pkg="${BASH_REMATCH[1]}"
      elif [[ -n "$pkg" && "$line" =~ ^\ +Candidate:\ (.+)$ ]]; then cand[$pkg]="${BASH_REMATCH[1]}"; fi
    done < <(apt-cache "${APT[@]}" policy "$@" 2>/dev/null)
    for pkg in "$@"; do [[ -v "cand[$pkg]" ]] || cand[$pkg]="(none)"; done
  }
  candidates "${BASE_PACKAGES[@]}"
  for p in "${BASE_PACKAGES[@]}"; do
    [[ -v "version[$p]" ]] && continue
    [[ "${cand[$p]}" != "(none)" ]] || die "base package $p has no candidate version"
    version[$p]="${cand[$p]}"; level+=("$p=${cand[$p]}")
  done
  local re='^([a-z0-9][a-z0-9.+-]*)(:[a-z0-9]+)? *(\(([<>=]+) *([^)]+)\))?$'
  while ((${#level[@]})); do
    # Each dependency group of this level: "PKG<TAB>alt | alt ...".
    local groups=() shown
    shown="$(apt-cache "${APT[@]}" show "${level[@]}")" \
      || die "apt-cache show ${level[*]} failed: a version this apt does not know (Debian 12 package lists needed; a pin to bump?)"
    mapfile -t groups < <(awk -F': ' '
      /^Package:/ { p = $2 }
      /^(Depends|Pre-Depends):/ { n = split($2, g, ", *"); for (i = 1; i <= n; i++) print p "\t" g[i] }' <<<"$shown")
    pending=(); next=()
    local g alt names=()
    for g in "${groups[@]}"; do
      IFS='|' read -ra alts <<<"${g#*$'\t'}"
      for alt in "${alts[@]}"; do
        read -r alt <<<"$alt"; [[ "$alt" =~ $re ]] || die "cannot parse dependency '$alt' of ${g%%$'\t'*}"
        names+=("${BASH_REMATCH[1]}")
      done
      pending+=("$g")
    done
    local unknown=()
    for x in "${names[@]}"; do [[ -v "cand[$x]" || -v "version[$x]" || -v "excluded[$x]" ]] || unknown+=("$x"); done
    ((${#unknown[@]})) && candidates "${unknown[@]}"
    for g in "${pending[@]}"; do
      IFS='|' read -ra alts <<<"${g#*$'\t'}"
      local chosen="" chosen_version="" satisfied=0
      for alt in "${alts[@]}"; do
        read -r alt <<<"$alt"; [[ "$alt" =~ $re ]]
        x="${BASH_REMATCH[1]}"
        if [[ -v "version[$x]" || -v "excluded[$x]" ]]; then satisfied=1; break; fi
      done
      ((satisfied)) && continue
      for alt in "${alts[@]}"; do
        read -r alt <<<"$alt"; [[ "$alt" =~ $re ]]
        x="${BASH_REMATCH[1]}"
        local op="${BASH_REMATCH[4]}" want="${BASH_REMATCH[5]}" v
        if [[ "$op" == "=" ]]; then v="$want"; else v="${cand[$x]:-(none)}"; fi
        [[ "$v" == "(none)" ]] && continue  # a virtual package: try the next alternative
        if [[ -n "$op" && "$op" != "=" ]]; then
          local dop; case "$op" in "<<") dop=lt ;; "<=") dop=le ;; ">=") dop=ge ;; ">>") dop=gt ;; *) dop=ge ;; esac
          dpkg --compare-versions "$v" "$dop" "$want" \
            || die "${g%%$'\t'*} needs $x ($op $want), apt offers $v"
        fi
        chosen=$x; chosen_version=$v; break
      done
      [[ -n "$chosen" ]] || die "no installable package for '${g#*$'\t'}' (of ${g%%$'\t'*}): add one to packages= or exclude= of $name in hack/debian-images.txt"
      version[$chosen]=$chosen_version; next+=("$chosen=$chosen_version")
    done
    level=("${next[@]}")
  done
  for p in "${!version[@]}"; do printf '%s %s\n' "$p" "${version[$p]}"; done | sort
}

if ((relock)) || ! grep -qx "$name @spec $spec" "$LOCK" 2>/dev/null; then
  apt_lists
  log "$name: resolving its packages and their run-time dependencies (apt-cache)"
  resolved="$(resolve)" || exit 1
  {
    if [[ -f "$LOCK" ]]; then grep -v "^$name " "$LOCK" || true; else
      printf '%s\n' "# The exact Debian packages of each workload image (hack/debian-images.txt), written by" \
        "# hack/debian-image.sh when an image's line or pin changes or with --relock NAME. Commit it." \
        "# NAME @spec <hash of what it was resolved from>, then NAME PACKAGE VERSION lines."
    fi
    printf '%s @spec %s\n' "$name" "$spec"
    while read -r p v; do printf '%s %s %s\n' "$name" "$p" "$v"; done <<<"$resolved"
  } >"$LOCK.tmp"
  mv "$LOCK.tmp" "$LOCK"
  log "$name: $(wc -l <<<"$resolved") packages recorded in hack/debian-images.lock"
fi

archive="$(workload_archive "$name")"
ref="$(workload_image "$name")"
if [[ -f "$archive" ]]; then
  log "$name: cached ($ref, $archive)"
  exit 0
fi

t0=$SECONDS
work="$(mktemp -d "$QUORATE_CACHE/images/.build-$name.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# The locked packages: download the missing ones, by exact version.
mapfile -t locked < <(awk -v n="$name" '$1 == n && $2 != "@spec" { print $2 " " $3 }' "$LOCK")
deb_of() { compgen -G "$DEBS/${1}_${2//:/%3a}_*.deb" | head -1; }
missing=()
for entry in "${locked[@]}"; do
  read -r p v <<<"$entry"
  [[ -n "$(deb_of "$p" "$v")" ]] || missing+=("$p=$v")
done
if ((${#missing[@]})); then
  apt_lists
  log "$name: downloading ${#missing[@]} packages"
  mkdir "$work/dl"
  download() { (cd "$work/dl" && apt-get "${APT[@]}" download -qq "${missing[@]}") >/dev/null; }
  # Stale lists name files the mirror has replaced: update them once and retry.
  download || { apt_update && download; } \
    || die "apt-get download failed for ${missing[*]}: a locked version the archive no longer serves? 'hack/debian-image.sh --relock $name' takes today's (and '$pin_var' in hack/versions.env may need a bump: apt-cache policy ${own[0]})"
  mv "$work/dl/"*.deb "$DEBS/"
fi

root="$work/rootfs"
mkdir "$root"
for entry in "${locked[@]}"; do
  read -r p v <<<"$entry"
  deb="$(deb_of "$p" "$v")"
  [[ -n "$deb" ]] || die "$p $v: no .deb in $DEBS after the download"
  dpkg-deb -x "$deb" "$root"
done
# Merged /usr, as on Debian 12 systems: /bin, /sbin, /lib* are symlinks into /usr (the packages
# still ship files there; dpkg -x has made them directories).
for d in bin sbin lib lib64; do
  if [[ -d "$root/$d" && ! -L "$root/$d" ]]; then
    mkdir -p "$root/usr/$d"
    cp -a "$root/$d/." "$root/usr/$d/"
    rm -rf "${root:?}/$d"
  fi
  mkdir -p "$root/usr/$d"
  ln -s "usr/$d" "$root/$d"
done
[[ -e "$root/lib64/ld-linux-x86-64.so.2" ]] || die "$name: /lib64/ld-linux-x86-64.so.2 does not resolve in the image"
[[ -x "$root/bin/sh" ]] || die "$name: no /bin/sh"
# No documentation but the copyright files.
rm -rf "$root"/usr/share/{man,info,locale,lintian,linda,bug,menu,doc-base,bash-completion}
if [[ -d "$root/usr/share/doc" ]]; then
  find "$root/usr/share/doc" -mindepth 2 ! -type d ! -name copyright -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
fi
# Users, groups, and directories (no maintainer script ran to create them).
user="$(debian_image_field "$name" user)"
workdir="$(debian_image_field "$name" workdir)"
{
  echo "root:x:0:0:root:/root:/bin/sh"
  if [[ -n "$user" ]]; then IFS=: read -r un uid gid <<<"$user"; echo "$un:x:$uid:$gid:$un:${workdir:-/}:/bin/sh"; fi
  echo "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"
} >"$root/etc/passwd"
{
  echo "root:x:0:"
  if [[ -n "$user" ]]; then echo "$un:x:$gid:"; fi
  echo "nogroup:x:65534:"
} >"$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"
printf '%s\n' "passwd: files" "group: files" "hosts: files dns" >"$root/etc/nsswitch.conf"
install -d -m 1777 "$root/tmp"
install -d -m 0700 "$root/root"
install -d -m 0755 "$root"/{dev,proc,sys,run}  # mount points (the runtime creates them too)
IFS=, read -ra dirs <<<"$(debian_image_field "$name" dirs)"
for d in "${dirs[@]}"; do install -d -m "${d#*:}" "$root/${d%%:*}"; done

cmd="$(debian_image_field "$name" cmd)"
# path=/d:/e: directories put before the standard PATH (the programs of postgresql-15 live in
# /usr/lib/postgresql/15/bin, which the official postgres image has on its PATH too).
extra_path="$(debian_image_field "$name" path)"
PATH_ENV="${extra_path:+$extra_path:}$PATH_ENV"
# The image must run its programs: every executable ELF file finds its libraries with the image's
# own loader, the shell and its tools work, the command is on PATH (chroot: root only).
if ((EUID == 0)); then
  elfs=()
  while IFS= read -r -d '' f; do
    IFS= read -r -n4 -d '' magic <"$f" || true
    [[ "$magic" == $'\x7fELF' ]] && elfs+=("/${f#"$root"/}")
  done < <(find "$root" -type f -perm /111 -print0)
  # shellcheck disable=SC2016 # expanded by the image's shell
  missing_libs="$(env -i PATH="$PATH_ENV" chroot "$root" /bin/sh -c \
    'for f; do echo "== $f"; /lib64/ld-linux-x86-64.so.2 --list "$f" 2>&1; done' sh "${elfs[@]}" \
    | awk '/^== / { f = $2; next } /not found|error while loading/ { print f ": " $0 }')"
  [[ -z "$missing_libs" ]] || die "$name: libraries missing from the image:"$'\n'"$missing_libs"
  [[ "$(env -i PATH="$PATH_ENV" chroot "$root" /bin/sh -c 'echo ok | sed s/ok/fine/ | grep fine')" == fine ]] \
    || die "$name: /bin/sh, sed or grep do not run in the image"
  if [[ -n "$cmd" ]]; then
    env -i PATH="$PATH_ENV" chroot "$root" /bin/sh -c "command -v '$cmd'" >/dev/null || die "$name: $cmd is not on PATH in the image"
  fi
  log "$name: its ${#elfs[@]} programs find their libraries; sh, sed, grep run"
else
  log "$name: not root, so not checked with chroot"
fi

python3 "$HACK/mkoci.py" "$work/image.tar" "$ref" ${cmd:+--cmd "[\"$cmd\"]"} --workdir "${workdir:-/}" --path "$PATH_ENV" "$root/:/" >/dev/null
mv "$work/image.tar" "$archive"
for old in "$QUORATE_CACHE/images/$name"-????????????.tar; do [[ "$old" == "$archive" ]] || rm -f "$old"; done
log "$name: built $ref into $archive ($(du -h "$archive" | cut -f1), ${#locked[@]} packages, $((SECONDS - t0)) s)"
