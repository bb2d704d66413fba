#!/usr/bin/env bash
# The tools `make test` uses to validate deploy/ offline: Debian's docker-compose (checks the
# compose file with `docker-compose config`, no Docker engine needed). kubectl, when installed,
# renders the kustomize overlays; without it the tests render them in Python.
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if command -v docker-compose >/dev/null; then
  echo "ensure-deploy-tools: $(docker-compose version --short 2>/dev/null || echo docker-compose) is installed"
else
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
  echo "ensure-deploy-tools: installed $(docker-compose version --short)"
fi
