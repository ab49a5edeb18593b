#!/usr/bin/env bash
# Installs the Debian packages dishwatch's tests and tools need, when missing and we are root.
# Otherwise names exactly what is missing and fails.
set -euo pipefail

# command -> Debian package
declare -A NEED=(
  [mosquitto]=mosquitto
  [mosquitto_sub]=mosquitto-clients
  [sshd]=openssh-server    # the deploy tests run a real sshd on a loopback port
  [ssh]=openssh-client     # make deploy, and ssh-keygen for the tests' throwaway keys
  [chromium]=chromium      # the dashboard's browser tests (headless, loopback only)
  [chromedriver]=chromium-driver
)

missing=()
for cmd in "${!NEED[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    missing+=("${NEED[$cmd]}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]} — run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian package may start a system broker on :1883; the tests start their own on free ports.
