#!/usr/bin/env bash
# `make pull-data DEVICE=user@host`: copy the staff-feedback dataset (MVTec layout: train/good/ for false alarms,
# test/<defect>/ for confirmed defects) from a device into data/feedback-<host>/, ready for
# `python -m train inspect --data` and `python -m train fit --data`, and the rows the device learned from those
# false alarms (feedback.learned_file) as learned.npz beside them, for `python -m train evaluate --learned`.
#
# Why tar over one ssh call instead of rsync or scp: it needs nothing on the device beyond a shell and tar, reads
# the service's state directory with the same sudo rule as `make deploy`, and a failed transfer leaves the local
# folder as it was (the archive is checked before it is unpacked). Pulling again merges: a relabelled image is
# replaced, nothing local is deleted.
#
# Settings (environment; make passes its command-line variables through):
#   DEVICE        user@host (required);  SSH_PORT (default 22);  DEPLOY_SSH_OPTS: extra ssh options (e.g. -i KEY)
#   DATASET_DIR   the device's feedback.dataset_dir (default /var/lib/dishwatch/feedback, as in the example config)
#   LEARNED_FILE  the device's feedback.learned_file (default /var/lib/dishwatch/learned.npz; empty: not pulled)
#   OUT           local folder (default data/feedback-<host>)
#   DEPLOY_SUDO   auto (sudo -n when the SSH user is not root) | 1 | 0
# shellcheck disable=SC2015  # `A && B || die`: die is meant to run when either check fails
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "pull-data: error: $*" >&2
  exit 2
}

DEVICE=${DEVICE:-}
SSH_PORT=${SSH_PORT:-22}
DATASET_DIR=${DATASET_DIR:-/var/lib/dishwatch/feedback}
LEARNED_FILE=${LEARNED_FILE-/var/lib/dishwatch/learned.npz}
DEPLOY_SSH_OPTS=${DEPLOY_SSH_OPTS:-}
DEPLOY_SUDO=${DEPLOY_SUDO:-auto}

[ -n "$DEVICE" ] || die "DEVICE is not set: make pull-data DEVICE=user@host"
[[ "$DEVICE" =~ ^([A-Za-z0-9._-]+@)?[A-Za-z0-9._:-]+$ ]] || die "DEVICE: expected user@host, got '$DEVICE'"
[[ "$SSH_PORT" =~ ^[0-9]+$ ]] && [ "$SSH_PORT" -ge 1 ] && [ "$SSH_PORT" -le 65535 ] ||
  die "SSH_PORT: expected a port number, got '$SSH_PORT'"
[[ "$DATASET_DIR" =~ ^/[A-Za-z0-9._/-]+$ ]] || die "DATASET_DIR: expected an absolute path, got '$DATASET_DIR'"
[ -z "$LEARNED_FILE" ] || [[ "$LEARNED_FILE" =~ ^/[A-Za-z0-9._/-]+$ ]] ||
  die "LEARNED_FILE: expected an absolute path (or empty: not pulled), got '$LEARNED_FILE'"
[[ "$DEPLOY_SUDO" =~ ^(auto|0|1)$ ]] || die "DEPLOY_SUDO: expected auto, 0 or 1, got '$DEPLOY_SUDO'"
host=${DEVICE#*@}
OUT=${OUT:-data/feedback-${host//:/_}}
command -v ssh >/dev/null || die "ssh not found: apt-get install openssh-client"

# shellcheck disable=SC2016  # auto is expanded by the device's shell: sudo only when the SSH user is not root
case "$DEPLOY_SUDO" in
  1) sudo='sudo -n' ;;
  0) sudo='' ;;
  *) sudo='$([ "$(id -u)" -eq 0 ] || echo sudo -n)' ;;
esac
stage=$(mktemp -d "${TMPDIR:-/tmp}/dishwatch-pull.XXXXXX")
trap 'rm -rf "$stage"' EXIT
read -ra ssh_opts <<<"$DEPLOY_SSH_OPTS"

# fetch WHAT DEST REMOTE_CMD: run REMOTE_CMD on the device into the local file DEST; 0, or 3 when the remote command
# says WHAT is not there; any other failure is one line naming WHAT.
fetch() {
  local rc
  set +e
  ssh -o BatchMode=yes -p "$SSH_PORT" "${ssh_opts[@]}" "$DEVICE" "$3" >"$2" 2>"$stage/ssh.err"
  rc=$?
  set -e
  case $rc in
    0 | 3) return $rc ;;
    255) die "ssh to $DEVICE (port $SSH_PORT) failed: check the address, the port and that your key is authorized" ;;
    *) die "reading $1 on $DEVICE failed (exit $rc): $(tr '\n' ' ' <"$stage/ssh.err" | cut -c1-300)" ;;
  esac
}

echo "==> pulling $DEVICE:$DATASET_DIR into $OUT"
# Exit 3 = no dataset yet (no feedback filed on that device), told apart from ssh's own 255.
fetch "$DATASET_DIR" "$stage/data.tar" \
  "$sudo sh -c 'test -d \"$DATASET_DIR\" || exit 3; tar -C \"$DATASET_DIR\" -cf - --exclude=\".*.tmp\" .'" ||
  die "$DEVICE has no $DATASET_DIR yet (no feedback filed there; or set DATASET_DIR to its feedback.dataset_dir)"
tar -tf "$stage/data.tar" >/dev/null 2>&1 || die "the archive from $DEVICE is damaged; nothing was changed in $OUT"
mkdir -p "$OUT"
tar -C "$OUT" -xf "$stage/data.tar" --no-same-owner
count() { if [ -d "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi; }
good=$(count "$OUT/train/good")
defects=$(count "$OUT/test")
echo "==> $OUT: $good false alarm(s) in train/good, $defects confirmed defect(s) in test/"
echo "    check it: python -m train inspect --data $OUT"

# The learned rows: one file, replaced whole by each pull (it is the device's current state, not a log). Exit 3 =
# the device has learned nothing yet (or learns nothing: a CAE bundle, feedback.learn = false).
[ -n "$LEARNED_FILE" ] || exit 0
if ! fetch "$LEARNED_FILE" "$stage/learned.npz" "$sudo sh -c 'test -f \"$LEARNED_FILE\" || exit 3; cat \"$LEARNED_FILE\"'"; then
  echo "==> no $LEARNED_FILE on $DEVICE: it has learned no rows (set LEARNED_FILE to its feedback.learned_file)"
  exit 0
fi
# an .npz is a zip archive; anything else is a wrong LEARNED_FILE, and the local copy stays as it was
[ "$(head -c 4 "$stage/learned.npz" | od -An -tx1 | tr -d ' \n')" = "504b0304" ] ||
  die "$DEVICE:$LEARNED_FILE is not a learned file (not an .npz archive); $OUT/learned.npz was left as it was"
# copied next to its place, then renamed: a full disk leaves the previous copy whole, never half a file
cp "$stage/learned.npz" "$OUT/.learned.npz.tmp"
mv -f "$OUT/.learned.npz.tmp" "$OUT/learned.npz"
echo "==> $OUT/learned.npz: the rows $DEVICE learned from its false alarms"
echo "    evaluate the device as it runs: python -m train evaluate --model BUNDLE_DIR --data DIR --learned $OUT/learned.npz"
