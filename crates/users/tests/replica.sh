#!/usr/bin/env bash
# A real PostgreSQL streaming replica on this machine, and the users service reading from it.
#
# Creates two throwaway clusters next to the machine's own (which it never touches): a primary on
# port 5442 with one database per shard, and a hot standby on 5443 made from it with
# pg_basebackup (streaming WAL). Then runs crates/users/tests/replica.rs against them, which shows
# reads served by the replica, read-your-writes on the primary, and the fallback to the primary
# while the replica is stopped. Both clusters are dropped on exit, success or not.
#
# Needs: root (pg_createcluster, pg_ctlcluster run as root and drop to postgres), the PostgreSQL
# server packages (PG_VERSION, default: the newest installed), and cargo.
# Usage: crates/users/tests/replica.sh      (from anywhere in the workspace)
set -euo pipefail

VER=${PG_VERSION:-$(ls /usr/lib/postgresql | sort -n | tail -1)}
PRIMARY=scalelab_primary
REPLICA=scalelab_replica
PPORT=${PRIMARY_PORT:-5442}
RPORT=${REPLICA_PORT:-5443}

cleanup() {
    pg_dropcluster --stop "$VER" "$REPLICA" 2>/dev/null || true
    pg_dropcluster --stop "$VER" "$PRIMARY" 2>/dev/null || true
}
trap cleanup EXIT
cleanup

trust_everything() {
    cat > "/etc/postgresql/$VER/$1/pg_hba.conf" <<HBA
local all all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
HBA
}

echo "$(date +%T) == primary: cluster $VER/$PRIMARY on port $PPORT"
pg_createcluster "$VER" "$PRIMARY" -p "$PPORT" >/dev/null
trust_everything "$PRIMARY"
pg_ctlcluster "$VER" "$PRIMARY" start
for i in 0 1 2; do
    psql -q -h 127.0.0.1 -p "$PPORT" -U postgres -c "CREATE DATABASE users_$i"
done

echo "$(date +%T) == replica: cluster $VER/$REPLICA on port $RPORT, from pg_basebackup of the primary"
pg_createcluster "$VER" "$REPLICA" -p "$RPORT" >/dev/null
trust_everything "$REPLICA"
DATA=$(pg_conftool -s "$VER" "$REPLICA" show data_directory)
find "$DATA" -mindepth 1 -delete   # pg_basebackup fills an empty directory
# -R writes standby.signal and primary_conninfo: the copy starts as a streaming hot standby;
# -c fast checkpoints at once (the default spread checkpoint makes this step take minutes).
su postgres -c "pg_basebackup -h 127.0.0.1 -p $PPORT -U postgres -D $DATA -R -X stream -c fast"
pg_ctlcluster "$VER" "$REPLICA" start
psql -h 127.0.0.1 -p "$PPORT" -U postgres -Atc \
    "SELECT 'replication: ' || application_name || ' ' || state FROM pg_stat_replication"
psql -h 127.0.0.1 -p "$RPORT" -U postgres -Atc "SELECT 'replica in recovery: ' || pg_is_in_recovery()"

export SCALELAB_REPLICA_PRIMARY="postgres://postgres@127.0.0.1:$PPORT"
export SCALELAB_REPLICA_STANDBY="postgres://postgres@127.0.0.1:$RPORT"
export SCALELAB_REPLICA_STOP="pg_ctlcluster $VER $REPLICA stop"
export SCALELAB_REPLICA_START="pg_ctlcluster $VER $REPLICA start"
cd "$(dirname "$0")/../../.."
echo "$(date +%T) == the replica test"
cargo test -p users --test replica -- --ignored --nocapture
