#!/usr/bin/env bash
# Makes sure Debian's Chromium is there for the browser tests (Playwright drives it through
# `executable_path`; Playwright's own browser download cannot work offline).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "ensure-browser: $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
  exit 0
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
echo "ensure-browser: installed $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
