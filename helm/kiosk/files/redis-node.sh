#!/bin/sh
# One node of Kiosk's Redis with Sentinel (helm/kiosk, redis.sentinel.enabled): each pod runs
# a Redis and a Sentinel, and this script starts either, or hands the master role over before
# the pod stops.
#   redis-node.sh redis      start Redis: the replica of the master the other nodes' Sentinels
#                            name; with none answering (a fresh cluster), the first node is
#                            the master and the others replicate it
#   redis-node.sh sentinel   start a Sentinel watching that same master
#   redis-node.sh handover   (preStop) if this node is the master, have the Sentinels promote
#                            a replica first, so a rolling update or a drain is no outage
# Environment: SELF (this node's address), NODES (every node's address, space-separated,
# the first one first), REDIS_PORT, SENTINEL_PORT, MASTER_NAME, QUORUM, DOWN_AFTER_MS,
# FAILOVER_TIMEOUT_MS, DATA_DIR, CONFIG_DIR, APPENDFSYNC; BIND (the address to listen on;
# unset: every address). tests/test_chart.py runs it on three loopback addresses.
set -eu

ASK_TIMEOUT=2      # seconds for one question to another node
AGREE_WAIT=30      # seconds to wait for the other Sentinels to agree on the master
RESOLVE_WAIT=60    # seconds a Sentinel waits for the master's name to resolve
HANDOVER_WAIT=${HANDOVER_WAIT:-20} # seconds preStop waits for a replica to take over

log() { echo "redis-node $SELF: $*" >&2; }

# What the other nodes' Sentinels name as the master, one answer a line (none: none answers).
answers() {
  for node in $NODES; do
    [ "$node" = "$SELF" ] && continue
    timeout "$ASK_TIMEOUT" redis-cli -h "$node" -p "$SENTINEL_PORT" --raw \
      sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1 || true
  done | grep -v '^$' || true
}

# The master the other nodes' Sentinels agree on; "" if none answers. While they disagree (a
# failover under way) ask again, for up to AGREE_WAIT seconds, then take the first answer.
named_master() {
  waited=0
  while :; do
    found=$(answers)
    if [ "$(echo "$found" | sort -u | wc -l)" -le 1 ] || [ "$waited" -ge "$AGREE_WAIT" ]; then
      echo "$found" | head -n 1
      return
    fi
    sleep 1
    waited=$((waited + 1))
  done
}

current_master() {
  master=$(named_master)
  if [ -z "$master" ]; then
    master=${NODES%% *}
    log "no Sentinel names a master: the first node, $master, is the master"
  fi
  echo "$master"
}

local_cli() {
  timeout "$ASK_TIMEOUT" redis-cli -h "${BIND:-127.0.0.1}" "$@"
}

start_redis() {
  master=$(current_master)
  # A replica (re)syncs at once: the few nodes need no wait for others to share a sync.
  set -- --port "$REDIS_PORT" --dir "$DATA_DIR" --appendonly yes \
    --appendfsync "$APPENDFSYNC" --save "" --protected-mode no \
    --replica-announce-ip "$SELF" --repl-diskless-sync-delay 0
  if [ -n "${BIND:-}" ]; then
    set -- "$@" --bind "$BIND"
  fi
  if [ "$master" = "$SELF" ]; then
    log "starting Redis as the master"
  else
    log "starting Redis as a replica of $master"
    set -- "$@" --replicaof "$master" "$REDIS_PORT"
  fi
  exec redis-server "$@"
}

start_sentinel() {
  master=$(current_master)
  waited=0
  until getent ahosts "$master" >/dev/null 2>&1; do
    [ "$waited" -ge "$RESOLVE_WAIT" ] && break
    sleep 1
    waited=$((waited + 1))
  done
  config="$CONFIG_DIR/sentinel.conf"
  cat >"$config" <<EOF
port $SENTINEL_PORT
dir $CONFIG_DIR
protected-mode no
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $SELF
sentinel monitor $MASTER_NAME $master $REDIS_PORT $QUORUM
sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS
sentinel failover-timeout $MASTER_NAME $FAILOVER_TIMEOUT_MS
sentinel parallel-syncs $MASTER_NAME 1
EOF
  if [ -n "${BIND:-}" ]; then
    echo "bind $BIND" >>"$config"
  fi
  log "starting a Sentinel watching $master"
  exec redis-server "$config" --sentinel
}

role() {
  local_cli -p "$REDIS_PORT" role 2>/dev/null | head -n 1
}

# Before this node stops as the master: the Sentinels promote a replica, this node follows it
# at once (so no client writes here after the new master took over), and it stops once the
# Sentinels have finished: a failover they leave half done blocks the next one for a while.
# The Sentinel may refuse (NOGOODSLAVE: its view of a replica is a moment stale) or abort a
# failover it started; while no failover runs and the role has not moved, ask again.
handover() {
  [ "$(role)" = master ] || exit 0
  waited=0
  followed=""
  refused=""
  while [ "$waited" -lt "$HANDOVER_WAIT" ]; do
    master=$(sentinel_says get-master-addr-by-name | head -n 1)
    if [ -n "$master" ] && [ "$master" != "$SELF" ]; then
      if [ -z "$followed" ]; then
        local_cli -p "$REDIS_PORT" replicaof "$master" "$REDIS_PORT" >/dev/null || true
        followed=$master
      fi
      if ! failover_running; then
        log "handed the master role to $followed after ${waited}s; now $(role)"
        exit 0
      fi
    elif ! failover_running; then
      # redis-cli exits 0 on an error reply: the reply itself says whether it was refused.
      reply=$(local_cli -p "$SENTINEL_PORT" sentinel failover "$MASTER_NAME" 2>&1 || true)
      if [ "$reply" != OK ] && [ "$reply" != "$refused" ]; then
        log "the Sentinel would not fail over yet ($reply); asking again"
        refused=$reply
      fi
    fi
    sleep 1
    waited=$((waited + 1))
  done
  log "no failover finished within ${HANDOVER_WAIT}s; stopping as $(role)"
}

failover_running() {
  sentinel_says master | grep -q failover_in_progress
}

sentinel_says() {
  local_cli -p "$SENTINEL_PORT" --raw sentinel "$1" "$MASTER_NAME" 2>/dev/null || true
}

case "${1:-}" in
  redis) start_redis ;;
  sentinel) start_sentinel ;;
  handover) handover ;;
  *)
    echo "usage: $0 redis|sentinel|handover" >&2
    exit 2
    ;;
esac
