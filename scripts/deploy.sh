#!/usr/bin/env bash
# `make deploy DEVICE=user@host`: ship edge/ and a model bundle to a device over SSH as a new versioned release,
# install the systemd service, restart it, health-check it, and roll back to the previous release on failure.
#
# Why one ssh call: the release, the remote script and its settings travel as one tarball on stdin, so nothing
# (least of all a secret) appears on a command line, and a dropped connection cannot leave half a protocol run.
# The device side is scripts/deploy/remote.sh; the health check is scripts/deploy/healthcheck.py.
#
# Settings (environment; make passes its command-line variables through):
#   DEVICE              user@host (required); SSH key auth, the user is root or has password-less sudo
#   BUNDLE              model bundle folder (default models/default)
#   CONFIG              dishwatch.toml to install as /etc/dishwatch/dishwatch.toml (kept if present on the device)
#   FORCE_CONFIG=1      replace the device's config with CONFIG
#   MQTT_PASSWORD_FILE  file holding the MQTT password; installed root-only (0600), never printed
#   SSH_PORT            (default 22);  DEPLOY_SSH_OPTS: extra ssh options (e.g. -i KEY)
#   DEPLOY_SUDO         auto (sudo when the SSH user is not root) | 1 | 0
#   HEALTH_TIMEOUT      seconds to wait for `online` (default 90);  DEPLOY_KEEP: releases kept (default 5)
#   REQUIREMENTS        pip requirements file replacing the pinned `edge` set (e.g. 32-bit Arm, see README)
#   DEPLOY_PIP_ARGS     extra pip install arguments on the device (e.g. --find-links DIR --no-index)
#   DEPLOY_PYTHON       the device's interpreter for the venv (default python3)
#   DEPLOY_ROOT, SYSTEMCTL  tests only: a prefix for the device's file system, and the systemctl to call
# shellcheck disable=SC2015  # `A && B || die`: die is meant to run when either check fails
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "deploy: error: $*" >&2
  exit 2
}
step() { echo "==> $*"; }

DEVICE=${DEVICE:-}
BUNDLE=${BUNDLE:-models/default}
CONFIG=${CONFIG:-}
FORCE_CONFIG=${FORCE_CONFIG:-0}
MQTT_PASSWORD_FILE=${MQTT_PASSWORD_FILE:-}
SSH_PORT=${SSH_PORT:-22}
DEPLOY_SSH_OPTS=${DEPLOY_SSH_OPTS:-}
DEPLOY_SUDO=${DEPLOY_SUDO:-auto}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-90}
DEPLOY_KEEP=${DEPLOY_KEEP:-5}
REQUIREMENTS=${REQUIREMENTS:-}
DEPLOY_PIP_ARGS=${DEPLOY_PIP_ARGS:-}
DEPLOY_PYTHON=${DEPLOY_PYTHON:-python3}
DEPLOY_ROOT=${DEPLOY_ROOT:-}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
PYTHON=${PYTHON:-python3}

# --- check the input before touching the device -------------------------------------------------------------
[ -n "$DEVICE" ] || die "DEVICE is not set: make deploy DEVICE=user@host"
[[ "$DEVICE" =~ ^([A-Za-z0-9._-]+@)?[A-Za-z0-9._:-]+$ ]] || die "DEVICE: expected user@host, got '$DEVICE'"
[[ "$SSH_PORT" =~ ^[0-9]+$ ]] && [ "$SSH_PORT" -ge 1 ] && [ "$SSH_PORT" -le 65535 ] ||
  die "SSH_PORT: expected a port number, got '$SSH_PORT'"
[[ "$FORCE_CONFIG" =~ ^[01]$ ]] || die "FORCE_CONFIG: expected 0 or 1, got '$FORCE_CONFIG'"
[[ "$DEPLOY_SUDO" =~ ^(auto|0|1)$ ]] || die "DEPLOY_SUDO: expected auto, 0 or 1, got '$DEPLOY_SUDO'"
[[ "$HEALTH_TIMEOUT" =~ ^[0-9]+$ ]] && [ "$HEALTH_TIMEOUT" -ge 1 ] ||
  die "HEALTH_TIMEOUT: expected seconds (> 0), got '$HEALTH_TIMEOUT'"
[[ "$DEPLOY_KEEP" =~ ^[0-9]+$ ]] && [ "$DEPLOY_KEEP" -ge 2 ] ||
  die "DEPLOY_KEEP: expected a number of releases >= 2, got '$DEPLOY_KEEP'"
[ -z "$DEPLOY_ROOT" ] || [[ "$DEPLOY_ROOT" == /* ]] || die "DEPLOY_ROOT: must be an absolute path, got '$DEPLOY_ROOT'"
[ -d "$BUNDLE" ] || die "BUNDLE: $BUNDLE is not a folder (train and convert one, or pass BUNDLE=path)"
[ -f "$BUNDLE/bundle.json" ] && [ -f "$BUNDLE/model.tflite" ] ||
  die "BUNDLE: $BUNDLE is not a bundle folder (needs bundle.json and model.tflite)"
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || die "CONFIG: $CONFIG does not exist"
[ -z "$MQTT_PASSWORD_FILE" ] || [ -r "$MQTT_PASSWORD_FILE" ] ||
  die "MQTT_PASSWORD_FILE: $MQTT_PASSWORD_FILE is not a readable file"
[ -z "$REQUIREMENTS" ] || [ -f "$REQUIREMENTS" ] || die "REQUIREMENTS: $REQUIREMENTS does not exist"
[ "$FORCE_CONFIG" = 0 ] || [ -n "$CONFIG" ] || die "FORCE_CONFIG=1 needs CONFIG=path/to/dishwatch.toml"
command -v ssh >/dev/null || die "ssh not found: apt-get install openssh-client"
"$PYTHON" -c 'import tomllib' 2>/dev/null || die "$PYTHON: Python 3.11+ needed here to read pyproject.toml"
if [ -n "$CONFIG" ]; then
  "$PYTHON" -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' "$CONFIG" 2>/dev/null ||
    die "CONFIG: $CONFIG is not valid TOML (python -m edge check-config $CONFIG says where)"
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/dishwatch-deploy.XXXXXX")
trap 'rm -rf "$stage"' EXIT
umask 077

# --- the release: edge/ only (no train/, convert/), the bundle, the pinned edge requirements, the unit ----------
step "packing the release (edge/, bundle $BUNDLE)"
rel=$stage/release
mkdir -p "$rel/bundle" "$rel/deploy"
tar -C . --exclude=__pycache__ --exclude='*.pyc' -cf - edge | tar -C "$rel" -xf -
cp -R "$BUNDLE/." "$rel/bundle/"
cp systemd/dishwatch-edge.service "$rel/"
cp scripts/deploy/healthcheck.py "$rel/deploy/"
if [ -n "$REQUIREMENTS" ]; then
  cp "$REQUIREMENTS" "$rel/requirements-edge.txt"
else
  "$PYTHON" - >"$rel/requirements-edge.txt" <<'PY'
import tomllib

for req in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["edge"]:
    print(req)
PY
fi
# Version = content hash: the same code + bundle + requirements is the same release (a redeploy is a no-op).
hash=$(cd "$rel" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
VERSION="r-$hash"
git_rev=$(git describe --always --dirty 2>/dev/null || echo unknown)
printf '{"version": "%s", "git": "%s", "packed": "%s", "bundle": "%s"}\n' \
  "$VERSION" "$git_rev" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(basename "$BUNDLE")" >"$rel/release.json"
cp scripts/deploy/remote.sh "$stage/"
if [ -n "$CONFIG" ]; then
  mkdir -p "$stage/config" && cp "$CONFIG" "$stage/config/dishwatch.toml"
fi
if [ -n "$MQTT_PASSWORD_FILE" ]; then
  mkdir -p "$stage/secrets" && cp "$MQTT_PASSWORD_FILE" "$stage/secrets/mqtt-password"
fi
{
  for v in VERSION FORCE_CONFIG HEALTH_TIMEOUT DEPLOY_KEEP DEPLOY_PIP_ARGS DEPLOY_PYTHON DEPLOY_ROOT SYSTEMCTL; do
    printf '%s=%q\n' "$v" "${!v}"
  done
} >"$stage/deploy.env"

# --- one ssh call: unpack into a private temp dir on the device, run remote.sh (as root), clean up --------------
# shellcheck disable=SC2016  # auto is expanded by the device's shell: sudo only when the SSH user is not root
case "$DEPLOY_SUDO" in
  1) sudo='sudo -n' ;;
  0) sudo='' ;;
  *) sudo='$([ "$(id -u)" -eq 0 ] || echo sudo -n)' ;;
esac
remote="d=\$(mktemp -d /tmp/dishwatch-deploy.XXXXXX) || exit 1; umask 077; tar -xzf - -C \"\$d\" || exit 1;"
remote+=" $sudo bash \"\$d/remote.sh\" \"\$d\"; rc=\$?; rm -rf \"\$d\" 2>/dev/null; exit \$rc"
read -ra ssh_opts <<<"$DEPLOY_SSH_OPTS"
step "deploying $VERSION ($git_rev) to $DEVICE"
set +e
tar -C "$stage" -czf - . | ssh -o BatchMode=yes -p "$SSH_PORT" "${ssh_opts[@]}" "$DEVICE" "$remote"
rc=${PIPESTATUS[1]}
set -e
case $rc in
  0) step "deployed $VERSION to $DEVICE" ;;
  255) die "ssh to $DEVICE (port $SSH_PORT) failed: check the address, the port and that your key is authorized" ;;
  *) exit "$rc" ;; # remote.sh already printed its one-line reason on stderr
esac
