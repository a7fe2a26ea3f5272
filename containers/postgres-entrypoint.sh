#!/bin/sh
# PostgreSQL for compose.yml (Containerfile.postgres). First start: a cluster in
# $PGDATA, the role $POSTGRES_USER (LOGIN CREATEDB) with the password read from
# $POSTGRES_PASSWORD_FILE, and the database $POSTGRES_DB it owns. Then the
# server, listening on every address with scram-sha-256 passwords.
set -eu

: "${POSTGRES_PASSWORD_FILE:?set POSTGRES_PASSWORD_FILE to the file holding the password}"
if [ ! -r "$POSTGRES_PASSWORD_FILE" ] || [ ! -s "$POSTGRES_PASSWORD_FILE" ]; then
    echo "postgres-entrypoint: cannot read a password from POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE (missing or empty)" >&2
    exit 1
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    install -d -m 0700 "$PGDATA"
    initdb --username=postgres --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 "$PGDATA" >/dev/null
    cat >> "$PGDATA/pg_hba.conf" <<HBA
# compose network
host    all    all    0.0.0.0/0    scram-sha-256
host    all    all    ::/0         scram-sha-256
HBA
    # A server on the Unix socket only, to create the role and database.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    # the password is read by psql itself (never on a command line)
    psql -v ON_ERROR_STOP=1 -q -U postgres -d postgres \
        -v user="$POSTGRES_USER" -v db="$POSTGRES_DB" <<'SQL'
\set pw `cat "$POSTGRES_PASSWORD_FILE"`
CREATE ROLE :"user" LOGIN CREATEDB PASSWORD :'pw';
CREATE DATABASE :"db" OWNER :"user";
SQL
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres-entrypoint: created the cluster, role $POSTGRES_USER and database $POSTGRES_DB"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
