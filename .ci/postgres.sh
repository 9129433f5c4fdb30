#!/usr/bin/env bash
# Install (if needed) and start Debian's PostgreSQL on 127.0.0.1:5432 with a role
# rlhfkit/rlhfkit that owns a database rlhfkit and may create more (the tests make one per test).
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
    pg_createcluster "$version" main >/dev/null
fi
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true
for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
su postgres -c "psql -q -c \"DO \\\$\\\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rlhfkit') THEN
    CREATE ROLE rlhfkit LOGIN PASSWORD 'rlhfkit' CREATEDB;
  END IF; END \\\$\\\$;\""
su postgres -c "psql -tAq -c \"SELECT 1 FROM pg_database WHERE datname = 'rlhfkit'\"" | grep -q 1 \
    || su postgres -c "createdb -O rlhfkit rlhfkit"
echo "postgresql $version running on 127.0.0.1:5432"
