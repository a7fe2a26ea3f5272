#!/bin/sh
# Redis for compose.yml (Containerfile.redis): the password from
# $REDIS_PASSWORD_FILE goes into a config file only the redis user reads.
set -eu

: "${REDIS_PASSWORD_FILE:?set REDIS_PASSWORD_FILE to the file holding the password}"
if [ ! -r "$REDIS_PASSWORD_FILE" ] || [ ! -s "$REDIS_PASSWORD_FILE" ]; then
    echo "redis-entrypoint: cannot read a password from REDIS_PASSWORD_FILE=$REDIS_PASSWORD_FILE (missing or empty)" >&2
    exit 1
fi

umask 077
conf=/tmp/redis.conf
{
    echo "bind * -::*"
    echo "port 6379"
    echo "dir /data"
    echo "appendonly yes"
    echo "maxmemory-policy noeviction"
    printf 'requirepass "%s"\n' "$(cat "$REDIS_PASSWORD_FILE")"
} > "$conf"
exec redis-server "$conf" "$@"
