#!/usr/bin/env bash
# Makes sure Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432) answer before the tests run.
# On the development and CI machines both are already running; on a fresh Debian machine they
# are installed from Debian's packages and started here.
set -euo pipefail

reachable() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_ready=""
apt_install() {
  if [ -z "$apt_ready" ]; then as_root apt-get update -qq; apt_ready=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
wait_for() {
  for _ in $(seq 1 50); do reachable "$1" && return 0; sleep 0.2; done
  echo "ensure-services: $2 did not come up on 127.0.0.1:$1" >&2; return 1
}

if reachable 6379; then
  echo "ensure-services: Redis is up on 127.0.0.1:6379"
else
  command -v redis-server >/dev/null || apt_install redis-server
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/deskmate-test.log
  wait_for 6379 Redis
  echo "ensure-services: started Redis on 127.0.0.1:6379"
fi

if reachable 5432; then
  echo "ensure-services: PostgreSQL is up on 127.0.0.1:5432"
else
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
    # A machine we set up for tests only: trust local TCP connections, as on the CI machines.
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
      as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    done
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for 5432 PostgreSQL
  echo "ensure-services: started PostgreSQL $version on 127.0.0.1:5432"
fi
