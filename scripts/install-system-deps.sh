#!/usr/bin/env bash
# Install the programs Kiosk runs beside Python when they are missing.
#   scripts/install-system-deps.sh redis-server            (the local stack)
#   scripts/install-system-deps.sh redis-server prometheus (the tests: rules in a real Prometheus)
set -euo pipefail

missing=()
for program in "${@:-redis-server}"; do
  command -v "$program" >/dev/null 2>&1 || missing+=("$program")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

# The package that brings each program, per package manager.
package() {  # manager program
  case "$1:$2" in
    apt:redis-server) echo redis-server ;;
    dnf:redis-server | brew:redis-server) echo redis ;;
    *:prometheus) echo prometheus ;;
    *) echo "$2" ;;
  esac
}

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else
    echo "${missing[*]} missing and this user cannot install packages: ask an administrator" \
         "to install ${missing[*]}, then run make again." >&2
    exit 1
  fi
}

if command -v apt-get >/dev/null 2>&1; then manager=apt
elif command -v dnf >/dev/null 2>&1; then manager=dnf
elif command -v brew >/dev/null 2>&1; then manager=brew
else
  echo "Cannot install ${missing[*]} on this system automatically: install them (Redis 6.2 or" \
       "newer, Prometheus 2.x) so that they are on PATH, then run make again." >&2
  exit 1
fi
packages=()
for program in "${missing[@]}"; do packages+=("$(package "$manager" "$program")"); done

echo "missing: ${missing[*]}; installing ${packages[*]}."
case "$manager" in
  apt)
    export DEBIAN_FRONTEND=noninteractive
    sudo_if_needed apt-get install -y --no-install-recommends "${packages[@]}" \
      || { sudo_if_needed apt-get update \
           && sudo_if_needed apt-get install -y --no-install-recommends "${packages[@]}"; } ;;
  dnf) sudo_if_needed dnf install -y "${packages[@]}" ;;
  brew) brew install "${packages[@]}" ;;
esac
for program in "${missing[@]}"; do
  command -v "$program" >/dev/null 2>&1 || { echo "$program is still not on PATH" >&2; exit 1; }
done
