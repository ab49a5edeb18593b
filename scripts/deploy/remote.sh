#!/usr/bin/env bash
# The device side of `make deploy` (runs as root, from the private temp dir scripts/deploy.sh unpacked).
#
# Layout (all under DEPLOY_ROOT, empty on a real device):
#   /opt/dishwatch/releases/<version>/   edge/, bundle/, venv -> ../../venvs/<hash>, release.json, the unit
#   /opt/dishwatch/venvs/<hash>/         one venv per (requirements, interpreter): a model-only release reuses it
#   /opt/dishwatch/current, previous     symlinks to releases/<version>; `current` is switched atomically
#   /etc/dishwatch/dishwatch.toml, mqtt-password (0600)   /etc/systemd/system/dishwatch-edge.service
# Nothing is switched until the new release is complete; after the switch any failure rolls back.
set -euo pipefail
umask 022

stage=$1
# shellcheck source=/dev/null
. "$stage/deploy.env"
work=$(mktemp -d /tmp/dishwatch-deploy-work.XXXXXX)
trap 'rm -rf "$work" "$stage"' EXIT

ROOT=${DEPLOY_ROOT:-}
OPT=$ROOT/opt/dishwatch
ETC=$ROOT/etc/dishwatch
UNIT=dishwatch-edge.service
UNIT_FILE=$ROOT/etc/systemd/system/$UNIT
CFG=$ETC/dishwatch.toml
PASSWORD=$ETC/mqtt-password
rel=$OPT/releases/$VERSION

step() { echo "==> [device] $*"; }
fail() {
  echo "deploy: error: $*" >&2
  exit 1
}

# --- preflight: nothing is changed yet -------------------------------------------------------------------------
step "checking the device (python, venv, systemctl, config)"
py=$(command -v "$DEPLOY_PYTHON") || fail "$DEPLOY_PYTHON not found on the device: apt-get install python3 python3-venv"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  fail "the device's $DEPLOY_PYTHON is $("$py" -V 2>&1); dishwatch needs Python 3.11+"
"$py" -c 'import ensurepip, venv' 2>/dev/null || fail "Python's venv module is missing on the device: apt-get install python3-venv"
command -v "$SYSTEMCTL" >/dev/null || fail "$SYSTEMCTL not found on the device (dishwatch runs as a systemd service)"
if [ ! -f "$CFG" ] && [ ! -f "$stage/config/dishwatch.toml" ]; then
  fail "no config on the device ($CFG): pass CONFIG=path/to/dishwatch.toml (see systemd/dishwatch.toml.example)"
fi

# --- the release directory and its venv (reused when already complete) -----------------------------------------
mkdir -p "$OPT/releases" "$OPT/venvs"
if [ -f "$rel/.complete" ]; then
  step "release $VERSION is already on the device: reusing it"
  touch "$rel"
else
  step "unpacking release $VERSION"
  rm -rf "$rel" "$rel.partial"
  cp -R "$stage/release" "$rel.partial"
  # The service runs as a dynamic user: everything it reads must be world-readable, nothing writable.
  chmod -R u=rwX,go=rX "$rel.partial"
  # Unpacked by the SSH user: as root, hand it to root so that user cannot change what the service runs.
  if [ "$(id -u)" -eq 0 ]; then chown -R 0:0 "$rel.partial"; fi
  venv_id=$( (cat "$rel.partial/requirements-edge.txt" && "$py" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)
  venv=$OPT/venvs/$venv_id
  if [ -f "$venv/.complete" ]; then
    step "venv $venv_id (same requirements) is already there: reusing it"
  else
    step "building venv $venv_id: $(tr '\n' ' ' <"$rel.partial/requirements-edge.txt")"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    # shellcheck disable=SC2086  # DEPLOY_PIP_ARGS is a list of arguments
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input $DEPLOY_PIP_ARGS \
      -r "$rel.partial/requirements-edge.txt" || fail "pip install of the edge requirements failed on the device"
    "$venv/bin/python" -c 'import numpy, cv2, paho.mqtt.client' ||
      fail "the new venv cannot import numpy, cv2 and paho"
    "$venv/bin/python" -c 'import ai_edge_litert' 2>/dev/null || "$venv/bin/python" -c 'import tflite_runtime' ||
      fail "the new venv has neither ai_edge_litert nor tflite_runtime"
    touch "$venv/.complete"
  fi
  ln -s "../../venvs/$venv_id" "$rel.partial/venv"
  # Byte-compile now: the service sees /opt read-only (ProtectSystem=strict) and would recompile on every start.
  "$rel.partial/venv/bin/python" -m compileall -q "$rel.partial/edge" "$rel.partial/deploy" >/dev/null
  touch "$rel.partial/.complete"
  mv -T "$rel.partial" "$rel"
fi

# --- from here on the device changes: remember what to restore ------------------------------------------------
mkdir -p "$ETC" "$(dirname "$UNIT_FILE")" "$work/restore"
old=$(readlink "$OPT/current" 2>/dev/null || true)
if [ -n "$old" ] && [ "$old" != "releases/$VERSION" ]; then
  target=$old
else
  target=$(readlink "$OPT/previous" 2>/dev/null || true)
fi
for f in "$CFG" "$PASSWORD" "$UNIT_FILE"; do
  if [ -e "$f" ]; then cp -p "$f" "$work/restore/$(basename "$f")"; fi
done

if [ -f "$stage/config/dishwatch.toml" ]; then
  if [ ! -e "$CFG" ] || [ "$FORCE_CONFIG" = 1 ]; then
    step "installing the config $CFG"
    install -m 0644 "$stage/config/dishwatch.toml" "$CFG"
  elif cmp -s "$stage/config/dishwatch.toml" "$CFG"; then
    step "config $CFG is unchanged"
  else
    step "keeping the device's config $CFG (it differs from CONFIG; FORCE_CONFIG=1 replaces it)"
  fi
fi
if [ -f "$stage/secrets/mqtt-password" ]; then
  step "installing the MQTT password file $PASSWORD (0600, root only)"
  (umask 077 && cp "$stage/secrets/mqtt-password" "$PASSWORD.new") && chmod 0600 "$PASSWORD.new" && mv -f "$PASSWORD.new" "$PASSWORD"
elif [ ! -e "$PASSWORD" ]; then
  # LoadCredential= refuses to start the service without its source file: empty = no password.
  (umask 077 && : >"$PASSWORD")
fi

step "installing $UNIT_FILE"
install -m 0644 "$rel/$UNIT" "$UNIT_FILE"
"$SYSTEMCTL" daemon-reload
"$SYSTEMCTL" enable --quiet "$UNIT"

switch_to() { # atomic: rename(2) of a fresh symlink over the old one
  ln -sfn "$1" "$OPT/current.new"
  mv -T "$OPT/current.new" "$OPT/current"
}

# Subscribe first, then restart: only an `online` published after the restart counts (a retained one from the
# old process does not).  Prints nothing on success; the reason on failure.
restart_and_check() {
  local release=$OPT/$1 out=$work/health.out ready=$work/health.ready waited=0
  rm -f "$ready"
  "$release/venv/bin/python" "$release/deploy/healthcheck.py" --config "$CFG" --unit "$UNIT_FILE" --root "$ROOT" \
    --check-only >"$out" 2>&1 || {
    tail -n 1 "$out"
    return 1
  }
  "$release/venv/bin/python" "$release/deploy/healthcheck.py" --config "$CFG" --unit "$UNIT_FILE" --root "$ROOT" \
    --timeout "$HEALTH_TIMEOUT" --ready-file "$ready" >"$out" 2>&1 &
  local hc=$!
  while [ ! -e "$ready" ] && kill -0 "$hc" 2>/dev/null && [ "$waited" -lt 100 ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  if ! "$SYSTEMCTL" restart "$UNIT" >"$work/restart.out" 2>&1; then
    kill "$hc" 2>/dev/null || true
    wait "$hc" 2>/dev/null || true
    echo "systemctl restart $UNIT failed: $(tail -n 1 "$work/restart.out")"
    return 1
  fi
  if ! wait "$hc"; then
    tail -n 1 "$out"
    return 1
  fi
  if ! "$SYSTEMCTL" is-active --quiet "$UNIT"; then
    echo "$UNIT is not active after it went online"
    return 1
  fi
}

step "switching current -> releases/$VERSION${old:+ (was $old)}"
[ -n "$old" ] && [ "$old" != "releases/$VERSION" ] && ln -sfn "$old" "$OPT/previous"
switch_to "releases/$VERSION"

step "restarting $UNIT and waiting up to ${HEALTH_TIMEOUT}s for it to go online"
if reason=$(restart_and_check "releases/$VERSION"); then
  step "healthy: $UNIT active, availability online"
else
  echo "==> [device] health check failed: $reason"
  "$SYSTEMCTL" status --no-pager --lines=20 "$UNIT" 2>&1 | sed 's/^/    /' || true
  for f in "$CFG" "$PASSWORD" "$UNIT_FILE"; do
    if [ -e "$work/restore/$(basename "$f")" ]; then
      cp -p "$work/restore/$(basename "$f")" "$f"
    fi
  done
  if [ -z "$target" ] || [ ! -f "$OPT/$target/.complete" ]; then
    step "no previous release to roll back to: stopping $UNIT"
    "$SYSTEMCTL" stop "$UNIT" || true
    fail "release $VERSION failed its health check ($reason); no previous release, service stopped"
  fi
  step "rolling back: current -> $target"
  [ -e "$work/restore/$UNIT" ] || install -m 0644 "$OPT/$target/$UNIT" "$UNIT_FILE"
  "$SYSTEMCTL" daemon-reload
  switch_to "$target"
  if again=$(restart_and_check "$target"); then
    step "rolled back to $target: healthy"
    fail "release $VERSION failed its health check ($reason); rolled back to $target"
  fi
  fail "release $VERSION failed its health check ($reason); rolled back to $target, which is NOT healthy either ($again)"
fi

# --- keep the newest DEPLOY_KEEP releases (never current or previous) and the venvs they use -----------------------
keep_prev=$(readlink "$OPT/previous" 2>/dev/null || true)
n=0
while IFS= read -r r; do
  n=$((n + 1))
  name=releases/$(basename "$r")
  if [ "$n" -gt "$DEPLOY_KEEP" ] && [ "$name" != "releases/$VERSION" ] && [ "$name" != "$keep_prev" ]; then
    step "pruning old release $(basename "$r")"
    rm -rf "$r"
  fi
done < <(find "$OPT/releases" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2-)
for v in "$OPT"/venvs/*; do
  [ -d "$v" ] || continue
  used=0
  for link in "$OPT"/releases/*/venv; do
    [ "$(readlink "$link")" = "../../venvs/$(basename "$v")" ] && used=1
  done
  if [ "$used" = 0 ]; then
    step "pruning unused venv $(basename "$v")"
    rm -rf "$v"
  fi
done
step "release $VERSION is live"
