"""The Redis queue protocol: submit, claim, heartbeat, update, finish, fail, retry, hand back,
wait for children (zip fan-in), requeue lapsed consumers, expire and delete.

Every change that moves a job between lists or ends it is one Lua script, so it is atomic, and
every consumer-side script is *fenced*: it acts only while the job is still in that consumer's
processing list. A consumer whose job the janitor took back (it was paused, partitioned or slow
to heartbeat) therefore cannot finish the job a second time; it is told it lost the job.

The scripts touch job hashes named inside lists they read. That is fine on a single Redis
(standalone or with replicas), which is what Kiosk runs; it would not be on Redis Cluster.
The scripts take every field and status name from :mod:`kiosk.keys` (see :func:`render_lua`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, astuple, dataclass
from enum import Enum
from string import Template
from typing import Any, cast

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from redis.retry import Retry

from kiosk.costs import USAGE_FIELDS, Usage, recorded_usage
from kiosk.fairshare import MAX_WEIGHT, MIN_WEIGHT, Line, Standing, start_order, weight_of
from kiosk.jobs import now_iso, parse_iso
from kiosk.keys import (
    ANONYMOUS,
    INPUT_USERS,
    JOB_INDEX,
    OWNER_LINE_PREFIX,
    OWNERS_PREFIX,
    PACE_PREFIX,
    PROCESSING_PREFIX,
    UPLOAD_PREFIX,
    USAGE_PREFIX,
    USER_PREFIX,
    USER_WEIGHT,
    VTIME_NOW,
    VTIME_PREFIX,
    WAITING_TOKEN,
    WOKEN,
    JobField,
    PaceField,
    Status,
    dead_letter_list,
    heartbeat_key,
    owner_line,
    parse_processing_list,
    processing_list,
)
from kiosk.pace import ALPHA, TAU, Pace
from kiosk.redis_url import check_redis_url, is_sentinel_url, parse_sentinel_url
from kiosk.sentinel import master_client
from kiosk.settings import CommonSettings

log = logging.getLogger(__name__)


def connect(url: str, *, retries: int = 30, socket_timeout: float | None = 10.0) -> redis.Redis:
    """A Redis client that rides out a Redis restart or failover: reconnects with backoff and
    jitter. ``url`` is redis://, rediss://, unix:// or redis+sentinel:// (:mod:`kiosk.redis_url`);
    through Sentinel every reconnection asks the Sentinels where the master is now.

    ``retries`` with the 2 s cap spans about a minute; frontends pass fewer so a request fails
    fast with 503 instead of hanging. Blocking commands need ``socket_timeout`` above their own.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "retry": Retry(ExponentialWithJitterBackoff(cap=2.0, base=0.05), retries),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5.0,
        "socket_keepalive": True,
        "health_check_interval": 15,
    }
    if is_sentinel_url(url):
        return master_client(parse_sentinel_url(url), options)
    return redis.Redis.from_url(check_redis_url(url), **options)


# ----------------------------------------------------------------------------- Lua
# The scripts name job-hash fields and statuses as $FIELD_* and $STATUS_* (the members of
# JobField and Status), and the fair-share keys by their names in kiosk.keys, so the names have
# one home; render_lua fills them in, and a name that does not exist fails at import rather
# than in Redis.

LUA_NAMES = (
    {f"FIELD_{field.name}": field.value for field in JobField}
    | {f"STATUS_{status.name}": status.value for status in Status}
    | {
        "ANONYMOUS": ANONYMOUS,
        "WAITING_TOKEN": WAITING_TOKEN,
        "WOKEN": WOKEN,
        "OWNER_LINE_PREFIX": OWNER_LINE_PREFIX,
        "OWNERS_PREFIX": OWNERS_PREFIX,
        "VTIME_PREFIX": VTIME_PREFIX,
        "VTIME_NOW": VTIME_NOW,
        "USER_PREFIX": USER_PREFIX,
        "USER_WEIGHT": USER_WEIGHT,
        "MIN_WEIGHT": repr(MIN_WEIGHT),
        "MAX_WEIGHT": repr(MAX_WEIGHT),
    }
    | {f"PACE_{field.name}": field.value for field in PaceField}
)


def render_lua(source: str) -> str:
    """A script with the names of :mod:`kiosk.keys` filled in."""
    return Template(source).substitute(LUA_NAMES)


_HELPERS = """
local function hash_to_table(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function is_hash(key)
  return redis.call('TYPE', key)['ok'] == 'hash'
end

local function expire_if_unset(key, ttl)
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ttl) end
end

local function is_live(key)
  local status = is_hash(key) and redis.call('HGET', key, '$FIELD_STATUS')
  return status and status ~= '$STATUS_DONE' and status ~= '$STATUS_FAILED'
end

-- Fair share. A queue's waiting jobs wait in one line per owner (oldest at the right); the
-- queue list holds one token per waiting job, which consumers block on (BLMOVE) and autoscaling
-- counts. The owners with work waiting are in a sorted set scored by virtual time: the jobs
-- they started, over their weight. A claim takes the oldest job of the owner with the least
-- (ties by name), so owners with work waiting start jobs in turn whatever they submitted when.
-- An owner whose line was empty comes back at the last claim's virtual time, never below it:
-- time spent idle is no credit. kiosk.fairshare predicts the same order.
local TOKEN = '$WAITING_TOKEN'

local function owner_of(key)
  local owner = redis.call('HGET', key, '$FIELD_OWNER')
  if not owner or owner == '' then return '$ANONYMOUS' end
  return owner
end

-- `key` joins its owner's line: at the back, or at the front (`front`) for a job going back
local function enqueue(queue, key, front)
  local owner = owner_of(key)
  local line = '$OWNER_LINE_PREFIX' .. queue .. ':' .. owner
  local owners = '$OWNERS_PREFIX' .. queue
  local push = front and 'RPUSH' or 'LPUSH'
  redis.call(push, line, key)
  if not redis.call('ZSCORE', owners, owner) then
    local vtimes = '$VTIME_PREFIX' .. queue
    local own = tonumber(redis.call('HGET', vtimes, owner) or '0')
    local now = tonumber(redis.call('HGET', vtimes, '$VTIME_NOW') or '0')
    redis.call('ZADD', owners, string.format('%.17g', math.max(own, now)), owner)
  end
  redis.call(push, queue, TOKEN)
end

-- a waiting `key` leaves its line, and a token leaves the queue with it
local function unqueue(queue, key)
  local owner = owner_of(key)
  local line = '$OWNER_LINE_PREFIX' .. queue .. ':' .. owner
  local removed = redis.call('LREM', line, 0, key)
  if removed == 0 then return end
  redis.call('LREM', queue, removed, TOKEN)
  if redis.call('LLEN', line) == 0 then redis.call('ZREM', '$OWNERS_PREFIX' .. queue, owner) end
end

-- the next job by fair share, its owner charged one job over their weight; false for none
local function take(queue)
  local owners = '$OWNERS_PREFIX' .. queue
  while true do
    local top = redis.call('ZRANGE', owners, 0, 0, 'WITHSCORES')
    if #top == 0 then return false end
    local owner, vtime = top[1], tonumber(top[2])
    local line = '$OWNER_LINE_PREFIX' .. queue .. ':' .. owner
    local key = redis.call('RPOP', line)
    if redis.call('LLEN', line) == 0 then redis.call('ZREM', owners, owner) end
    if key and is_live(key) then
      local weight = tonumber(redis.call('HGET', '$USER_PREFIX' .. owner, '$USER_WEIGHT') or '')
      if not weight or weight ~= weight or weight <= 0 or weight == math.huge then weight = 1 end
      weight = math.min(math.max(weight, $MIN_WEIGHT), $MAX_WEIGHT)  -- as kiosk.fairshare
      local after = string.format('%.17g', vtime + 1 / weight)
      redis.call('HSET', '$VTIME_PREFIX' .. queue, owner, after,
                 '$VTIME_NOW', string.format('%.17g', vtime))
      redis.call('ZADD', owners, 'XX', after, owner)
      return key
    end
    if key then redis.call('LREM', queue, 1, TOKEN) end  -- a stale entry's token goes too
  end
end

-- a waiting zip parent whose children have all finished goes back to the front of its owner's
-- line on its queue,
-- where a zip consumer assembles the results. `exact`: only on the increment that completes it,
-- so the parent is queued once whichever of "last child ends" and "parent parks" comes last.
-- A parent that parked with `wake_at` (a movie that links its frames while the rest are still
-- segmented) goes back early too, once that many children ended; `wake_at` then reads WOKEN
-- until it parks again, so the last child's end does not queue it a second time.
local function release_parent(parent, now, exact)
  local f = redis.call('HMGET', parent, '$FIELD_TOTAL_JOBS', '$FIELD_CHILDREN_DONE',
                       '$FIELD_CHILDREN_FAILED', '$FIELD_STATUS', '$FIELD_WAKE_AT')
  local total = tonumber(f[1] or '')
  if not total or total < 1 or f[4] ~= '$STATUS_WAITING' then return end
  local ended = tonumber(f[2] or '0') + tonumber(f[3] or '0')
  redis.call('HSET', parent, '$FIELD_UPDATED_AT', now,
             '$FIELD_PROGRESS', tostring(math.min(99, math.floor(100 * ended / total))))
  if f[5] == '$WOKEN' then return end  -- in its line already
  local wake = tonumber(f[5] or '')
  local due = function(at) return ended == at or (not exact and ended > at) end
  if due(total) or (wake and ended < total and due(wake)) then
    if wake then redis.call('HSET', parent, '$FIELD_WAKE_AT', '$WOKEN') end
    enqueue(string.match(parent, '^([^:]+):'), parent, true)
  end
end

-- a child job just ended (done or failed): count it on its zip parent
local function child_ended(key, field, now)
  local parent = redis.call('HGET', key, '$FIELD_PARENT')
  if not parent or parent == '' or not is_hash(parent) then return end
  redis.call('HINCRBY', parent, field, 1)
  release_parent(parent, now, true)
end

-- Every job created with an upload as its input is listed under it in the inputs hash (one
-- job a line), so that deleting a job deletes its input only once no other job uses it.
local LINE = string.char(10)

local function add_user(inputs, input, job)
  if input == '' then return end
  local users = redis.call('HGET', inputs, input)
  redis.call('HSET', inputs, input, users and (users .. LINE .. job) or job)
end

-- forget `job`, and jobs that no longer exist, as users of an input; how many are left
local function release_input(inputs, input, job)
  local users = redis.call('HGET', inputs, input)
  if not users then return 0 end
  local left = {}
  for user in string.gmatch(users, '[^' .. LINE .. ']+') do
    if user ~= job and redis.call('EXISTS', user) == 1 then left[#left + 1] = user end
  end
  if #left == 0 then
    redis.call('HDEL', inputs, input)
  else
    redis.call('HSET', inputs, input, table.concat(left, LINE))
  end
  return #left
end

-- mark failed, keep a copy on the dead-letter list, give the hash its finished TTL
local function fail_job(key, dlq, now, ttl, reason, dlq_max)
  redis.call('HSET', key, '$FIELD_STATUS', '$STATUS_FAILED', '$FIELD_REASON', reason,
             '$FIELD_FINISHED_AT', now, '$FIELD_UPDATED_AT', now)
  child_ended(key, '$FIELD_CHILDREN_FAILED', now)
  local entry = cjson.encode({key = key, failed_at = now, reason = reason,
                              fields = hash_to_table(redis.call('HGETALL', key))})
  redis.call('LPUSH', dlq, entry)
  redis.call('LTRIM', dlq, 0, tonumber(dlq_max) - 1)
  expire_if_unset(key, ttl)
end
"""

# KEYS: job, queue, index, inputs
# ARGV: created (epoch s), input ('' when not an upload), parent ('' for none), field, value, ...
# A zip child whose parent is gone (deleted while the zip was unpacked) is not created: -1.
_SUBMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[3] ~= '' and not is_hash(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[3], ARGV[1], KEYS[1])
enqueue(KEYS[2], KEYS[1], false)
add_user(KEYS[4], ARGV[2], KEYS[1])
return 1
"""

# KEYS: job or the token, processing, queue   ARGV: now, consumer id
# A token in the processing list becomes the next job by fair share; a job key there (queued
# by an older producer that pushed keys) is started as it is. Replies {job, field, value, ...}.
_START = """
local key = KEYS[1]
if key == TOKEN then
  if redis.call('LREM', KEYS[2], 1, TOKEN) == 0 then return false end
  key = take(KEYS[3])
  if not key then return false end
  redis.call('LPUSH', KEYS[2], key)
else
  if not redis.call('LPOS', KEYS[2], key) then return false end
  if not is_live(key) then
    redis.call('LREM', KEYS[2], 1, key)
    return false
  end
end
redis.call('HINCRBY', key, '$FIELD_ATTEMPTS', 1)
redis.call('HSET', key, '$FIELD_STATUS', '$STATUS_STARTED', '$FIELD_UPDATED_AT', ARGV[1],
           '$FIELD_STARTED_AT', ARGV[1], '$FIELD_UPDATED_BY', ARGV[2],
           '$FIELD_IDENTITY_STARTED', ARGV[2])
local reply = redis.call('HGETALL', key)
table.insert(reply, 1, key)
return reply
"""

# KEYS: job, processing   ARGV: now, field, value, ...
_UPDATE = """
if not redis.call('LPOS', KEYS[2], KEYS[1]) then return -1 end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('LREM', KEYS[2], 1, KEYS[1])
  return 0
end
redis.call('HSET', KEYS[1], '$FIELD_UPDATED_AT', ARGV[1], unpack(ARGV, 2))
return 1
"""

# KEYS: job, processing   ARGV: now, ttl, status, field, value, ...
_FINISH = """
if redis.call('LREM', KEYS[2], 1, KEYS[1]) == 0 then return {-1, 0} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, redis.call('LLEN', KEYS[2])} end
redis.call('HSET', KEYS[1], '$FIELD_STATUS', ARGV[3], '$FIELD_UPDATED_AT', ARGV[1], unpack(ARGV, 4))
if ARGV[3] == '$STATUS_DONE' then
  redis.call('HSET', KEYS[1], '$FIELD_FINISHED_AT', ARGV[1], '$FIELD_PROGRESS', '100')
  expire_if_unset(KEYS[1], ARGV[2])
  child_ended(KEYS[1], '$FIELD_CHILDREN_DONE', ARGV[1])
end
return {1, redis.call('LLEN', KEYS[2])}
"""

# KEYS: job, index   ARGV: created (epoch s), now, parent, field, value, ...
# A zip entry that could not be read: its child is created failed and counted on the parent.
_SUBMIT_ENDED_CHILD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if not is_hash(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
child_ended(KEYS[1], '$FIELD_CHILDREN_FAILED', ARGV[2])
return 1
"""

# KEYS: job, processing   ARGV: now, field, value, ...
# A zip parent whose children are queued: it leaves the consumer's list and waits, holding no
# consumer. The next phase starts afresh, so attempts restart from zero. An early wake
# (`wake_at`) holds only for the park that sets it.
_WAIT = """
if redis.call('LREM', KEYS[2], 1, KEYS[1]) == 0 then return {-1, 0} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, redis.call('LLEN', KEYS[2])} end
redis.call('HDEL', KEYS[1], '$FIELD_WAKE_AT')
redis.call('HSET', KEYS[1], '$FIELD_STATUS', '$STATUS_WAITING', '$FIELD_ATTEMPTS', '0',
           '$FIELD_UPDATED_AT', ARGV[1], unpack(ARGV, 2))
release_parent(KEYS[1], ARGV[1], false)
return {1, redis.call('LLEN', KEYS[2])}
"""

# KEYS: job, queue, index, inputs   ARGV: now
# Deleting a child that has not ended counts it as failed, so its parent is not left waiting.
# Replies {1 if the job existed, its input, how many other jobs still use that input}.
_DELETE = """
redis.call('LREM', KEYS[2], 0, KEYS[1])  -- queued by an older producer that pushed keys
redis.call('ZREM', KEYS[3], KEYS[1])
if not is_hash(KEYS[1]) then return {redis.call('DEL', KEYS[1]), '', 0} end
unqueue(KEYS[2], KEYS[1])
local f = redis.call('HMGET', KEYS[1], '$FIELD_STATUS', '$FIELD_INPUT_FILE_NAME')
if f[1] ~= '$STATUS_DONE' and f[1] ~= '$STATUS_FAILED' then
  child_ended(KEYS[1], '$FIELD_CHILDREN_FAILED', ARGV[1])
end
redis.call('DEL', KEYS[1])
local input = f[2] or ''
if input == '' then return {1, '', 0} end
return {1, input, release_input(KEYS[4], input, KEYS[1])}
"""

# KEYS: inputs   ARGV: input, ...
# Forget users that no longer exist (expired jobs); replies how many inputs were forgotten.
_PRUNE_INPUTS = """
local forgotten = 0
for i = 1, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 and release_input(KEYS[1], ARGV[i], '') == 0 then
    forgotten = forgotten + 1
  end
end
return forgotten
"""

# KEYS: inputs   ARGV: 'unfinished' or 'any', input, ...
# The inputs a job still uses: one that has not ended (new, running, a waiting zip), or any.
_INPUTS_IN_USE = """
local used = {}
for i = 2, #ARGV do
  for user in string.gmatch(redis.call('HGET', KEYS[1], ARGV[i]) or '', '[^' .. LINE .. ']+') do
    local status = is_hash(user) and redis.call('HGET', user, '$FIELD_STATUS')
    local ended = status == '$STATUS_DONE' or status == '$STATUS_FAILED'
    if status and (ARGV[1] == 'any' or not ended) then
      used[#used + 1] = ARGV[i]
      break
    end
  end
end
return used
"""

# KEYS: job, processing, dead-letter   ARGV: now, ttl, reason, dlq max
_FAIL = """
if redis.call('LREM', KEYS[2], 1, KEYS[1]) == 0 then return {-1, 0} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, redis.call('LLEN', KEYS[2])} end
fail_job(KEYS[1], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return {1, redis.call('LLEN', KEYS[2])}
"""

# KEYS: job, processing, queue, dead-letter   ARGV: now, ttl, reason, dlq max, max attempts
_RETRY = """
if redis.call('LREM', KEYS[2], 1, KEYS[1]) == 0 then return {-1, 0} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, redis.call('LLEN', KEYS[2])} end
local attempts = tonumber(redis.call('HGET', KEYS[1], '$FIELD_ATTEMPTS') or '0')
local max = tonumber(ARGV[5])
if attempts >= max then
  fail_job(KEYS[1], KEYS[4], ARGV[1], ARGV[2],
           ARGV[3] .. ' (gave up after ' .. attempts .. ' of ' .. max .. ' attempts)', ARGV[4])
  return {2, redis.call('LLEN', KEYS[2])}
end
redis.call('HSET', KEYS[1], '$FIELD_STATUS', '$STATUS_NEW', '$FIELD_LAST_ERROR', ARGV[3],
           '$FIELD_UPDATED_AT', ARGV[1])
enqueue(KEYS[3], KEYS[1], false)
return {1, redis.call('LLEN', KEYS[2])}
"""

# KEYS: job, processing, queue   ARGV: now
_HAND_BACK = """
if redis.call('LREM', KEYS[2], 1, KEYS[1]) == 0 then return {-1, 0} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, redis.call('LLEN', KEYS[2])} end
if tonumber(redis.call('HGET', KEYS[1], '$FIELD_ATTEMPTS') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], '$FIELD_ATTEMPTS', -1)
end
redis.call('HSET', KEYS[1], '$FIELD_STATUS', '$STATUS_NEW', '$FIELD_UPDATED_AT', ARGV[1])
enqueue(KEYS[3], KEYS[1], true)
return {1, redis.call('LLEN', KEYS[2])}
"""

# KEYS: processing, heartbeat, queue, dead-letter
# ARGV: now, ttl, dlq max, max attempts, consumer id
_REQUEUE_LAPSED = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {0, 0, 0} end
local requeued, failed, dropped = 0, 0, 0
local max = tonumber(ARGV[4])
local key = redis.call('RPOP', KEYS[1])
while key do
  if key == TOKEN then
    redis.call('RPUSH', KEYS[3], TOKEN)  -- claimed but not yet a job: it waits again
  elseif not is_live(key) then
    dropped = dropped + 1
  else
    local attempts = tonumber(redis.call('HGET', key, '$FIELD_ATTEMPTS') or '0')
    local why = 'consumer ' .. ARGV[5] .. ' stopped responding during attempt ' .. attempts
    if attempts >= max then
      fail_job(key, KEYS[4], ARGV[1], ARGV[2],
               why .. ' (gave up after ' .. attempts .. ' of ' .. max .. ' attempts)', ARGV[3])
      failed = failed + 1
    else
      redis.call('HSET', key, '$FIELD_STATUS', '$STATUS_NEW', '$FIELD_LAST_ERROR', why,
                 '$FIELD_UPDATED_AT', ARGV[1])
      enqueue(KEYS[3], key, true)
      requeued = requeued + 1
    end
  end
  key = redis.call('RPOP', KEYS[1])
end
return {requeued, failed, dropped}
"""

# KEYS: pace, queue   ARGV: now (epoch s), tau, seconds the job took ('' if it did not end
# done), alpha. A consumer settled a job: count it toward the queue's throughput if work was
# waiting at the previous settle (kiosk.pace), and average its seconds in.
_PACE = """
local f = redis.call('HMGET', KEYS[1], '$PACE_COUNT', '$PACE_BUSY', '$PACE_AT',
                     '$PACE_BACKLOGGED', '$PACE_SECONDS')
local now, tau = tonumber(ARGV[1]), tonumber(ARGV[2])
local gap = math.max(0, now - (tonumber(f[3] or '') or now))
local decay = math.exp(-gap / tau)
local count, busy = tonumber(f[1] or '0') * decay, tonumber(f[2] or '0') * decay
if f[4] == '1' then count, busy = count + 1, busy + gap end
local seconds = tonumber(f[5] or '')
if ARGV[3] ~= '' then
  local took = tonumber(ARGV[3])
  seconds = seconds and seconds + tonumber(ARGV[4]) * (took - seconds) or took
end
local function fmt(x) return string.format('%.17g', x) end
redis.call('HSET', KEYS[1], '$PACE_COUNT', fmt(count), '$PACE_BUSY', fmt(busy),
           '$PACE_AT', ARGV[1], '$PACE_BACKLOGGED', redis.call('LLEN', KEYS[2]) > 0 and '1' or '0')
if seconds then redis.call('HSET', KEYS[1], '$PACE_SECONDS', fmt(seconds)) end
return 1
"""


# ----------------------------------------------------------------------------- results


class Outcome(Enum):
    """What a fenced consumer-side operation found."""

    APPLIED = "applied"
    RETRYING = "retrying"  # retry: queued again
    FAILED = "failed"  # retry: out of attempts, failed instead
    GONE = "gone"  # the job hash no longer exists (deleted or expired by a client)
    LOST = "lost"  # the job is no longer this consumer's (the janitor requeued it)


@dataclass(frozen=True)
class Settled:
    """Result of ending a claim: the outcome and how many jobs this consumer still holds."""

    outcome: Outcome
    still_held: int = 0


@dataclass(frozen=True)
class Sweep:
    """What one janitor pass did to a lapsed consumer's processing list."""

    processing_list: str
    consumer_id: str
    requeued: int
    failed: int
    dropped: int


@dataclass(frozen=True)
class Removed:
    """What deleting one job found: whether it existed, its input (an upload key, or empty)
    and how many other jobs still use that input."""

    key: str
    existed: bool
    input: str = ""
    users_left: int = 0

    @property
    def input_free(self) -> bool:
        """The input is an upload that no other job uses: it may be deleted."""
        return self.input.startswith(UPLOAD_PREFIX) and self.users_left == 0


class ParentGone(Exception):
    """A zip child was not created: its parent job was deleted while the zip was unpacked."""


@dataclass(frozen=True)
class QueueStats:
    """A queue's load: items waiting, items held by consumers (the processing lists' lengths),
    failed copies on its dead-letter list. Demand (queued + in flight) is what scaling uses."""

    queue: str
    queued: int
    in_flight: int
    dead_letters: int = 0

    @property
    def demand(self) -> int:
        return self.queued + self.in_flight


@dataclass(frozen=True)
class Claim:
    """A job this consumer now holds."""

    key: str
    queue: str
    fields: dict[str, str]

    @property
    def attempt(self) -> int:
        return int(self.fields.get(JobField.ATTEMPTS, "1") or 1)


@dataclass(frozen=True)
class Heartbeat:
    """What a live consumer says about itself, under its heartbeat key until the TTL lapses."""

    queue: str
    host: str = ""
    pid: int = 0
    jobs: tuple[str, ...] = ()  # the jobs it holds: one predicting, perhaps one finishing
    stopping: bool = False

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "jobs": list(self.jobs)})

    @classmethod
    def from_json(cls, text: str | None) -> Heartbeat | None:
        """None for an expired or unreadable value, so one bad key cannot hide the rest."""
        try:
            info = json.loads(text) if text else None
        except ValueError:
            return None
        if not isinstance(info, dict) or not isinstance(info.get("queue"), str):
            return None
        jobs = info.get("jobs")
        if not isinstance(jobs, list):  # a consumer from before "jobs": one job or ""
            jobs = [info["job"]] if info.get("job") else []
        return cls(
            queue=info["queue"],
            host=str(info.get("host", "")),
            pid=int(info.get("pid") or 0),
            jobs=tuple(str(j) for j in jobs),
            stopping=bool(info.get("stopping", False)),
        )


@dataclass(frozen=True)
class Liveness:
    """A consumer's heartbeat and how long it lives, written with its claims."""

    beat: Heartbeat
    ttl: float


def _live(status: str | None) -> bool:
    """A job that exists and has not ended: what a claim may start."""
    return status is not None and status not in (Status.DONE, Status.FAILED)


def _upload_of(fields: Mapping[str, str]) -> str:
    """The job's input when it is an upload (the only inputs Kiosk ever deletes)."""
    key = fields.get(JobField.INPUT_FILE_NAME, "")
    return key if key.startswith(UPLOAD_PREFIX) else ""


def _flat(fields: Mapping[str, object]) -> list[str]:
    out: list[str] = []
    for name, value in fields.items():
        out += [str(name), "" if value is None else str(value)]
    return out


def _outcome(code: int, applied: Outcome = Outcome.APPLIED) -> Outcome:
    """The scripts' reply codes: 1 applied, 0 hash gone, -1 not held, 2 failed (retry)."""
    return {1: applied, 0: Outcome.GONE, -1: Outcome.LOST, 2: Outcome.FAILED}[int(code)]


def _settled(reply: list[int], applied: Outcome = Outcome.APPLIED) -> Settled:
    return Settled(_outcome(reply[0], applied), int(reply[1]))


class JobQueue:
    """The queue protocol over one Redis client. Thread-safe, as redis-py clients are."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        max_attempts: int = 3,
        finished_ttl: int = 86400,
        dead_letter_max: int = 10000,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        if min_replicas < 0 or replica_timeout <= 0:
            raise ValueError("min_replicas must be 0 or more and replica_timeout above 0")
        self.redis = client
        self.max_attempts = max_attempts
        self.finished_ttl = finished_ttl
        self.dead_letter_max = dead_letter_max
        self.min_replicas = min_replicas
        self.replica_timeout = replica_timeout
        self._unreplicated = 0  # writes no replica acknowledged in time (see _replicated)
        self._unreplicated_lock = threading.Lock()

        def register(source: str) -> Script:
            return client.register_script(render_lua(source))

        self._submit = register(_HELPERS + _SUBMIT)
        self._start = register(_HELPERS + _START)
        self._update = register(_UPDATE)
        self._finish = register(_HELPERS + _FINISH)
        self._fail = register(_HELPERS + _FAIL)
        self._retry = register(_HELPERS + _RETRY)
        self._hand_back = register(_HELPERS + _HAND_BACK)
        self._wait = register(_HELPERS + _WAIT)
        self._submit_ended_child = register(_HELPERS + _SUBMIT_ENDED_CHILD)
        self._delete = register(_HELPERS + _DELETE)
        self._prune_inputs = register(_HELPERS + _PRUNE_INPUTS)
        self._inputs_in_use = register(_HELPERS + _INPUTS_IN_USE)
        self._requeue_lapsed = register(_HELPERS + _REQUEUE_LAPSED)
        self._pace = register(_PACE)

    @classmethod
    def from_settings(
        cls, settings: CommonSettings, *, retries: int = 30, socket_timeout: float | None = 10.0
    ) -> JobQueue:
        return cls(
            connect(settings.redis_url, retries=retries, socket_timeout=socket_timeout),
            max_attempts=settings.max_attempts,
            finished_ttl=settings.finished_ttl,
            dead_letter_max=settings.dead_letter_max,
            min_replicas=settings.replicas_to_wait_for(),
            replica_timeout=settings.redis_replica_timeout,
        )

    # ------------------------------------------------------------------ replication

    @property
    def unreplicated(self) -> int:
        """How many writes this queue made that fewer than ``min_replicas`` replicas had
        acknowledged when ``replica_timeout`` ran out."""
        return self._unreplicated

    def _replicated(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run a state-changing script; with ``min_replicas``, reply only once that many
        replicas have its write (WAIT on the same connection, right after the script), so
        what was acknowledged survives a failover to one of them.

        When the replicas do not answer within ``replica_timeout`` the write still stands on
        the master: the reply is returned as usual and a warning logged (a failover before
        the replicas catch up would lose it). Without ``min_replicas``: the script alone.
        (A submission retried after a lost reply finds its job there, writes nothing, and so
        waits for nothing: WAIT counts the writes of this connection.)"""
        if not self.min_replicas:
            return script(keys=keys, args=args)
        reply, acknowledged = self._script_then_wait(script, keys, args)
        self._note_replicas(keys[0], acknowledged)
        return reply

    def _note_replicas(self, what: str, acknowledged: int) -> None:
        """Count and log a write fewer than ``min_replicas`` replicas acknowledged in time."""
        if acknowledged >= self.min_replicas:
            return
        with self._unreplicated_lock:
            self._unreplicated += 1
        log.warning(
            "%s: %d of %d replicas acknowledged the write within %.1fs; it stands on the "
            "master, and a failover before the replicas catch up would lose it",
            what,
            acknowledged,
            self.min_replicas,
            self.replica_timeout,
        )

    def _script_then_wait(
        self, script: Script, keys: list[str], args: list[Any]
    ) -> tuple[Any, int]:
        """The script's reply and how many replicas acknowledged its write. The script is
        loaded again once if the server does not know it (a new master after a failover)."""
        reply, acknowledged = self._send_script_and_wait(script, keys, args)
        if isinstance(reply, NoScriptError):
            script.sha = self.redis.script_load(script.script)
            reply, acknowledged = self._send_script_and_wait(script, keys, args)
        for result in (reply, acknowledged):
            if isinstance(result, Exception):
                raise result
        return reply, int(acknowledged)

    def _send_script_and_wait(
        self, script: Script, keys: list[str], args: list[Any]
    ) -> tuple[Any, Any]:
        """EVALSHA then WAIT in one pipeline, so on one connection: WAIT counts the replicas
        that have this connection's last write. Errors come back as values."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            self._wait_for_replicas(pipe)
            reply, acknowledged = pipe.execute(raise_on_error=False)
        return reply, acknowledged

    def _wait_for_replicas(self, pipe: Pipeline) -> None:
        """Queue a WAIT for ``min_replicas`` after the pipeline's writes (same connection)."""
        wait_ms = max(1, round(self.replica_timeout * 1000))  # WAIT 0 would wait forever
        pipe.execute_command("WAIT", self.min_replicas, wait_ms)

    # ------------------------------------------------------------------ producers

    def submit(self, queue: str, key: str, fields: Mapping[str, str]) -> str:
        """Create the job hash and queue it in one step: never one without the other. Doing it
        again is a no-op, so a retry after a lost reply cannot queue the job twice. The job is
        listed as a user of its input (an upload) in the same step. A zip child whose parent
        no longer exists is not created: :class:`ParentGone`."""
        created = parse_iso(fields.get(JobField.CREATED_AT))
        score = created.timestamp() if created else 0.0
        parent = fields.get(JobField.PARENT, "")
        reply = self._replicated(
            self._submit,
            [key, queue, JOB_INDEX, INPUT_USERS],
            [score, _upload_of(fields), parent, *_flat(fields)],
        )
        if reply == -1:
            raise ParentGone(f"{key} was not created: its zip job {parent} no longer exists")
        return key

    def add_usage(self, owner: str, group: str, usage: Usage) -> None:
        """Add one settled attempt's usage to its owner's running totals (what the exporter
        gives Prometheus; the job hashes stay the exact record, ``kiosk usage``). The totals
        hash has the job hash's field names: group and the usage fields."""
        key = USAGE_PREFIX + (owner or ANONYMOUS)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, JobField.GROUP, group)
            for field, value in zip(USAGE_FIELDS, astuple(usage), strict=True):
                pipe.hincrbyfloat(key, field, value)
            pipe.execute()

    def note_settled(self, queue: str, seconds: float | None, now: float | None = None) -> None:
        """A consumer of ``queue`` settled a job, done in ``seconds`` (None: it did not end
        done): the queue's pace (:mod:`kiosk.pace`)."""
        self._pace(
            keys=[PACE_PREFIX + queue, queue],
            args=[
                repr(time.time() if now is None else now),
                TAU,
                "" if seconds is None else repr(seconds),
                ALPHA,
            ],
        )

    def pace(self, queue: str) -> Pace:
        return Pace.of(cast(dict[str, str], self.redis.hgetall(PACE_PREFIX + queue)))

    def usage_totals(self) -> dict[str, tuple[str, Usage]]:
        """Each owner's group and running usage totals."""
        totals: dict[str, tuple[str, Usage]] = {}
        for key in self.redis.scan_iter(match=USAGE_PREFIX + "*", count=500):
            fields = cast(dict[str, str], self.redis.hgetall(key))
            if fields:
                owner = str(key).removeprefix(USAGE_PREFIX)
                totals[owner] = (fields.get(JobField.GROUP, ""), recorded_usage(fields))
        return totals

    def submit_ended_child(self, job_type: str, key: str, fields: Mapping[str, str]) -> str:
        """Create a zip child that has already ended (its entry was unreadable): it is never
        queued, but it is counted on its parent like any child that ended."""
        created = parse_iso(fields.get(JobField.CREATED_AT))
        score = created.timestamp() if created else 0.0
        parent = fields.get(JobField.PARENT, "")
        reply = self._replicated(
            self._submit_ended_child, [key, JOB_INDEX], [score, now_iso(), parent, *_flat(fields)]
        )
        if reply == -1:
            raise ParentGone(f"{key} was not created: its zip job {parent} no longer exists")
        self.redis.expire(key, self.finished_ttl)
        return key

    # ------------------------------------------------------------------ consumers

    def claim(
        self, queue: str, consumer_id: str, timeout: float, alive: Liveness | None = None
    ) -> Claim | None:
        """Block up to ``timeout`` s for a job; move it into this consumer's processing list.

        With ``alive`` (the consumer's heartbeat and its TTL), the heartbeat is written in the
        same round trip, just before the move: the janitor, which gives back the jobs of
        consumers without a heartbeat, can then never take a job its live consumer just
        claimed, even when the heartbeat was lost (a Redis restart) and the consumer's own
        beat has not come round yet. The TTL must outlast ``timeout``.
        """
        held = processing_list(queue, consumer_id)
        with self.redis.pipeline(transaction=False) as pipe:
            if alive is not None:
                self._beat(pipe, consumer_id, alive)
            # BLMOVE takes fractional seconds; redis-py's hint says int.
            pipe.blmove(queue, held, timeout, src="RIGHT", dest="LEFT")  # type: ignore[arg-type]
            key = cast("str | None", pipe.execute()[-1])
        return self._started(key, queue, consumer_id) if key else None

    def held(
        self,
        queue: str,
        consumer_id: str,
        skip: Collection[str] = (),
        alive: Liveness | None = None,
    ) -> Claim | None:
        """The oldest job in this consumer's list that it is not working on (``skip``): one
        whose claim reply was lost to a connection error, or left when Redis restarted from an
        older AOF point. ``alive`` refreshes the heartbeat first, as in :meth:`claim`."""
        if alive is not None:
            self._beat(self.redis, consumer_id, alive)
        keys = cast(list[str], self.redis.lrange(processing_list(queue, consumer_id), 0, -1))
        key = next((key for key in reversed(keys) if key not in skip), None)
        return self._started(key, queue, consumer_id) if key else None

    def _started(self, key: str, queue: str, consumer_id: str) -> Claim | None:
        """Start the job ``key`` names in this consumer's list: the next by fair share for the
        token, else that job."""
        reply = self._start(
            keys=[key, processing_list(queue, consumer_id), queue], args=[now_iso(), consumer_id]
        )
        if not reply:
            if key != WAITING_TOKEN:
                log.info("skipped %s: deleted, expired or finished while it waited", key)
            return None
        job, *flat = reply
        return Claim(job, queue, dict(zip(flat[::2], flat[1::2], strict=True)))

    def heartbeat(self, consumer_id: str, ttl: float, beat: Heartbeat) -> None:
        self._beat(self.redis, consumer_id, Liveness(beat, ttl))

    @staticmethod
    def _beat(client: redis.Redis | Pipeline, consumer_id: str, alive: Liveness) -> None:
        client.set(heartbeat_key(consumer_id), alive.beat.to_json(), px=int(alive.ttl * 1000))

    def live_consumers(self) -> dict[str, Heartbeat]:
        """Consumers with a current heartbeat: id -> what they last reported."""
        keys = [str(key) for key in self.redis.scan_iter(match=heartbeat_key("*"), count=500)]
        if not keys:
            return {}
        prefix = len(heartbeat_key(""))
        values = cast(list[str | None], self.redis.mget(keys))
        beats = zip(keys, map(Heartbeat.from_json, values), strict=True)
        return {key[prefix:]: beat for key, beat in beats if beat is not None}

    def stop_heartbeat(self, consumer_id: str) -> None:
        self.redis.delete(heartbeat_key(consumer_id))

    def update(self, claim: Claim, consumer_id: str, fields: Mapping[str, object]) -> Outcome:
        """Write fields of a held job (status, progress, timings)."""
        code = self._update(
            keys=[claim.key, processing_list(claim.queue, consumer_id)],
            args=[now_iso(), *_flat(fields)],
        )
        return _outcome(code)

    def finish(
        self,
        claim: Claim,
        consumer_id: str,
        fields: Mapping[str, object],
        status: Status = Status.DONE,
    ) -> Settled:
        """Release a held job with its final fields; ``done`` also starts the hash's TTL."""
        reply = self._replicated(
            self._finish,
            [claim.key, processing_list(claim.queue, consumer_id)],
            [now_iso(), self.finished_ttl, status, *_flat(fields)],
        )
        return _settled(reply)

    def fail(self, claim: Claim, consumer_id: str, reason: str) -> Settled:
        """Fail now, whatever attempts are left: for errors that a retry cannot fix."""
        reply = self._replicated(
            self._fail,
            [claim.key, processing_list(claim.queue, consumer_id), dead_letter_list(claim.queue)],
            [now_iso(), self.finished_ttl, reason, self.dead_letter_max],
        )
        return _settled(reply, Outcome.FAILED)

    def retry(self, claim: Claim, consumer_id: str, reason: str) -> Settled:
        """Queue again behind the others, or fail if this was the last attempt."""
        reply = self._replicated(
            self._retry,
            [
                claim.key,
                processing_list(claim.queue, consumer_id),
                claim.queue,
                dead_letter_list(claim.queue),
            ],
            [now_iso(), self.finished_ttl, reason, self.dead_letter_max, self.max_attempts],
        )
        return _settled(reply, Outcome.RETRYING)

    def hand_back(self, claim: Claim, consumer_id: str) -> Settled:
        """Return a job unfinished (shutdown) to the front of its queue; the attempt is not
        counted."""
        reply = self._replicated(
            self._hand_back,
            [claim.key, processing_list(claim.queue, consumer_id), claim.queue],
            [now_iso()],
        )
        return _settled(reply)

    def wait_for_children(
        self, claim: Claim, consumer_id: str, fields: Mapping[str, object]
    ) -> Settled:
        """Park a zip parent in ``waiting`` (its ``total_jobs`` children are queued) without
        holding this consumer. When the last child ends, the parent goes back to the front of
        its queue for the results step; if they all ended already, it goes back at once.
        ``fields`` may set ``wake_at``: it goes back once that many children ended as well,
        once, to do what it can early (it parks again after)."""
        reply = self._replicated(
            self._wait,
            [claim.key, processing_list(claim.queue, consumer_id)],
            [now_iso(), *_flat(fields)],
        )
        return _settled(reply)

    # ------------------------------------------------------------------ janitor

    def processing_lists(self, queues: Iterable[str] | None = None) -> Iterator[str]:
        patterns = (
            [f"{PROCESSING_PREFIX}{q}:*" for q in queues]
            if queues is not None
            else [f"{PROCESSING_PREFIX}*"]
        )
        for pattern in patterns:
            yield from self.redis.scan_iter(match=pattern, count=500, _type="list")

    def requeue_lapsed(self, queues: Iterable[str] | None = None) -> list[Sweep]:
        """Give back the jobs of every consumer whose heartbeat has lapsed."""
        sweeps = []
        for held in self.processing_lists(queues):
            parsed = parse_processing_list(held)
            if parsed is None:
                continue
            queue, consumer_id = parsed
            requeued, failed, dropped = self._requeue_lapsed(
                keys=[held, heartbeat_key(consumer_id), queue, dead_letter_list(queue)],
                args=[
                    now_iso(),
                    self.finished_ttl,
                    self.dead_letter_max,
                    self.max_attempts,
                    consumer_id,
                ],
            )
            if requeued or failed or dropped:
                sweeps.append(Sweep(held, consumer_id, requeued, failed, dropped))
        return sweeps

    def prune_index(self, batch: int = 500) -> int:
        """Drop index entries whose job hash has expired or been deleted."""
        removed, start = 0, 0
        while True:
            keys = cast(list[str], self.redis.zrange(JOB_INDEX, start, start + batch - 1))
            if not keys:
                return removed
            with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.exists(key)
                alive = pipe.execute()
            gone = [k for k, a in zip(keys, alive, strict=True) if not a]
            if gone:
                self.redis.zrem(JOB_INDEX, *gone)
                removed += len(gone)
            start += batch - len(gone)

    # ------------------------------------------------------------------ readers

    def get(self, key: str) -> dict[str, str] | None:
        """All of a job's fields, or None when the key is missing or not a hash."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.type(key)
            pipe.hgetall(key)
            kind, values = pipe.execute(raise_on_error=False)
        return values if kind == "hash" and isinstance(values, dict) else None

    def get_fields(self, key: str, fields: list[str]) -> list[str | None] | None:
        """Values of these fields in order (None where unset), or None when not a hash."""
        if not fields:
            raise ValueError("name at least one field")
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.type(key)
            pipe.hmget(key, fields)
            kind, values = pipe.execute(raise_on_error=False)
        return values if kind == "hash" and isinstance(values, list) else None

    def expire(self, key: str, seconds: int) -> bool:
        return bool(self.redis.expire(key, seconds))

    def delete(self, key: str, queue: str) -> bool:
        """Remove a job wherever it is; a consumer holding it notices at its next update. A zip
        child that had not ended counts as failed on its parent."""
        return self.remove([(key, queue)])[0].existed

    def remove(self, jobs: Sequence[tuple[str, str]]) -> list[Removed]:
        """:meth:`delete` for many (job key, queue) pairs in one round trip, each in one atomic
        step; says for each whether its input is still used by another job."""
        now = now_iso()
        with self.redis.pipeline(transaction=False) as pipe:
            for key, queue in jobs:
                self._delete(keys=[key, queue, JOB_INDEX, INPUT_USERS], args=[now], client=pipe)
            if self.min_replicas and jobs:
                self._wait_for_replicas(pipe)
            replies = pipe.execute()
        if self.min_replicas and jobs:
            self._note_replicas(jobs[0][0], int(replies.pop()))
        return [
            Removed(key, bool(existed), str(input_key), int(left))
            for (key, _), (existed, input_key, left) in zip(jobs, replies, strict=True)
        ]

    def inputs_in_use(
        self, inputs: Sequence[str], *, unfinished_only: bool = True, batch: int = 500
    ) -> set[str]:
        """Those of these upload keys that a job still uses: one that has not ended (queued,
        running, a zip waiting for its images), or with ``unfinished_only=False`` any job that
        still exists."""
        mode = "unfinished" if unfinished_only else "any"
        used: set[str] = set()
        for start in range(0, len(inputs), batch):
            chunk = list(inputs[start : start + batch])
            used.update(self._inputs_in_use(keys=[INPUT_USERS], args=[mode, *chunk]))
        return used

    def prune_inputs(self, batch: int = 500) -> int:
        """Forget the users of inputs that no longer exist (jobs that expired); how many inputs
        no job uses any more and were dropped from the list."""
        forgotten = 0
        fields: list[str] = []
        for field, _users in self.redis.hscan_iter(INPUT_USERS, count=batch):  # NOVALUES: 7.4+
            fields.append(str(field))
            if len(fields) == batch:
                forgotten += int(self._prune_inputs(keys=[INPUT_USERS], args=fields))
                fields = []
        if fields:
            forgotten += int(self._prune_inputs(keys=[INPUT_USERS], args=fields))
        return forgotten

    def recent(self, limit: int, after: tuple[float, str] | None = None) -> list[tuple[str, float]]:
        """Newest jobs first as (key, created), strictly after the position ``after``.

        The order is (created, key) descending, so jobs created in the same millisecond are
        neither skipped nor repeated across pages.
        """
        top, last_key = after if after is not None else ("+inf", None)
        found: list[tuple[str, float]] = []
        offset = 0
        while len(found) < limit:
            batch = cast(
                list[tuple[str, float]],
                self.redis.zrevrangebyscore(
                    JOB_INDEX, top, "-inf", start=offset, num=limit, withscores=True
                ),
            )
            if not batch:
                break
            offset += len(batch)
            for key, created in batch:
                if last_key is not None and created == top and key >= last_key:
                    continue  # at or before the position, in Redis's reverse member order
                found.append((key, created))
                if len(found) == limit:
                    break
        return found

    def waiting_of(self, owners: Sequence[str], queues: Iterable[str]) -> int:
        """How many jobs these owners have waiting to start on these queues."""
        with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                for owner in owners:
                    pipe.llen(owner_line(queue, owner))
            return sum(int(n) for n in pipe.execute())

    def standings(self, queue: str) -> list[Standing]:
        """Each owner with work waiting on ``queue``: virtual time, jobs waiting, weight."""
        owners = cast(
            list[tuple[str, float]],
            self.redis.zrange(OWNERS_PREFIX + queue, 0, -1, withscores=True),
        )
        with self.redis.pipeline(transaction=False) as pipe:
            for owner, _ in owners:
                pipe.llen(owner_line(queue, owner))
                pipe.hget(USER_PREFIX + owner, USER_WEIGHT)
            replies = pipe.execute()
        return [
            Standing(owner, vtime, int(waiting), weight_of(weight))
            for (owner, vtime), waiting, weight in zip(
                owners, replies[::2], replies[1::2], strict=True
            )
        ]

    def line_index(self, queue: str, owner: str, key: str) -> int | None:
        """How many of ``owner``'s jobs on ``queue`` wait ahead of ``key`` (None: not waiting
        in that line)."""
        line = owner_line(queue, owner or ANONYMOUS)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpos(line, key)
            pipe.llen(line)
            at, length = pipe.execute()
        return None if at is None else int(length) - 1 - int(at)

    def lines(self, queue: str) -> list[Line]:
        """Each owner's waiting jobs on ``queue`` (oldest first), virtual time and weight."""
        standings = self.standings(queue)
        with self.redis.pipeline(transaction=False) as pipe:
            for standing in standings:
                pipe.lrange(owner_line(queue, standing.owner), 0, -1)
            lines = pipe.execute()
        return [
            Line(s.owner, s.vtime, jobs[::-1], s.weight)
            for s, jobs in zip(standings, lines, strict=True)
        ]

    def waiting(self, queue: str) -> list[str]:
        """The jobs waiting on ``queue`` in the order consumers will start them: the queue
        list from its claimed end, each token standing for the next job by fair share and
        each key an older producer pushed there for itself; entries of jobs that ended or
        vanished are skipped, as claims skip them."""
        lines = self.lines(queue)
        keys = [key for line in lines for key in line.jobs]
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, JobField.STATUS)
            statuses = dict(zip(keys, pipe.execute(), strict=True))
        live = [
            Line(line.owner, line.vtime, [k for k in line.jobs if _live(statuses[k])], line.weight)
            for line in lines
        ]
        order = start_order(live)
        found = []
        for entry in reversed(cast(list[str], self.redis.lrange(queue, 0, -1))):
            if entry != WAITING_TOKEN:
                found.append(entry)
            elif (job := next(order, None)) is not None:
                found.append(job)
        return found + list(order)  # jobs whose tokens consumers hold right now

    def get_many(self, keys: list[str]) -> list[dict[str, str]]:
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            return pipe.execute()

    def stats(self, queues: Iterable[str]) -> list[QueueStats]:
        out = []
        for queue in queues:
            lists = list(self.processing_lists([queue]))
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.llen(queue)
                pipe.llen(dead_letter_list(queue))
                for held in lists:
                    pipe.llen(held)
                queued, dead, *held_counts = pipe.execute()
            out.append(QueueStats(queue, queued, sum(held_counts), dead))
        return out

    def dead_letters(self, queue: str, limit: int = 100) -> list[dict[str, object]]:
        return [
            json.loads(entry) for entry in self.redis.lrange(dead_letter_list(queue), 0, limit - 1)
        ]
