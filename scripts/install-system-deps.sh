#!/usr/bin/env bash
# Install the programs Kiosk runs beside Python (redis-server) when they are missing.
set -euo pipefail

command -v redis-server >/dev/null 2>&1 && exit 0

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else
    echo "redis-server is missing and this user cannot install packages: ask an administrator" \
         "to install redis-server, then run make again." >&2
    exit 1
  fi
}

echo "redis-server is missing; installing it."
if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  sudo_if_needed apt-get install -y --no-install-recommends redis-server \
    || { sudo_if_needed apt-get update && sudo_if_needed apt-get install -y --no-install-recommends redis-server; }
elif command -v dnf >/dev/null 2>&1; then
  sudo_if_needed dnf install -y redis
elif command -v brew >/dev/null 2>&1; then
  brew install redis
else
  echo "Cannot install redis-server on this system automatically: install Redis 6.2 or newer" \
       "so that redis-server is on PATH, then run make again." >&2
  exit 1
fi
command -v redis-server >/dev/null 2>&1 || { echo "redis-server is still not on PATH" >&2; exit 1; }
