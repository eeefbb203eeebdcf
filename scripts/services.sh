#!/usr/bin/env bash
# Start the local Redis (>= 7.0) and PostgreSQL when they are down (../shared/SERVICES.md).
set -uo pipefail

if ! command -v redis-server >/dev/null || ! command -v pg_ctlcluster >/dev/null; then
  echo "services: installing redis-server and postgresql (apt-get)"
  apt-get update -qq && apt-get install -y -qq redis-server postgresql >/dev/null
fi

if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  echo "services: starting redis-server on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi

if ! pg_isready -h 127.0.0.1 -q; then
  echo "services: starting postgresql on 127.0.0.1:5432"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi

for _ in $(seq 1 50); do
  if redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -q; then
    exit 0
  fi
  sleep 0.2
done
echo "services: redis or postgresql did not come up" >&2
exit 1
