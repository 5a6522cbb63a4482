#!/usr/bin/env bash
# Makes sure the Postgres the tests use answers. It starts the local Debian
# cluster if it is installed but stopped; otherwise it says how to get one.
set -euo pipefail

url=${TELEMESH_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}

ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -d "$url" -t 2
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}

if ready; then
  exit 0
fi

if [ -n "${TELEMESH_TEST_DATABASE_URL:-}" ]; then
  echo "Postgres at TELEMESH_TEST_DATABASE_URL does not answer; start it or unset the variable to use 127.0.0.1:5432." >&2
  exit 1
fi

if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  for version in $(ls /etc/postgresql); do
    for cluster in $(ls "/etc/postgresql/$version"); do
      echo "starting Postgres cluster $version/$cluster" >&2
      pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start || true
    done
  done
  for _ in $(seq 1 30); do
    if ready; then exit 0; fi
    sleep 1
  done
fi

cat >&2 <<'MSG'
No Postgres answers on 127.0.0.1:5432 and none could be started.
Install and start one (Debian: apt-get install postgresql, then
  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start),
or point the tests at a server you have:
  export TELEMESH_TEST_DATABASE_URL=postgres://user@host:5432/postgres
MSG
exit 1
