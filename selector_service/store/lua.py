"""Lua scripts of the Redis phase-state store (selector_service/store/redis_store.py).

Each script is registered once with ``redis.Redis.register_script`` and run with EVALSHA. Every
key a script touches is passed in KEYS (none is built inside a script), and all keys of a run
share the hash tag ``{RUN}``, so a script stays on one Redis Cluster slot. The scripts do only
compare-and-set and bookkeeping (COMMIT_SELECT also answers a lost compare-and-set with the
state it lost to, so the selector recomputes without another read); the PCM math stays in
Python (selector_service/core).

Idempotency records (``pcm:{RUN}:req:REQUEST_ID``) are strings whose first byte is the request
kind: ``S`` (select; the packed SelectResponse follows, its header holding the request digest)
or ``R`` (outcome report; the request digest follows). Each record is also listed in the run's
sorted set ``pcm:{RUN}:reqs`` (member request_id, score its expiry in ms, by Redis' clock), so
that ``delete_run`` can delete every record of the run atomically without SCAN; entries past
their expiry are pruned from the set on every write. The selection ids a run answered are kept
the same way in ``pcm:{RUN}:sels`` (outcome reports must name one of them).
"""

from __future__ import annotations

# Shared by the scripts that store an idempotency record or register selection ids.
_REMEMBER = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function remember(req_key, reqs_key, request_id, record, ttl_s)
  redis.call('SET', req_key, record, 'EX', ttl_s)
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', reqs_key, '-inf', now)
  redis.call('ZADD', reqs_key, now + tonumber(ttl_s) * 1000, request_id)
end
local function register(sels_key, selection_ids, ttl_s)
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', sels_key, '-inf', now)
  for _, selection_id in ipairs(selection_ids) do
    redis.call('ZADD', sels_key, now + tonumber(ttl_s) * 1000, selection_id)
  end
end
"""

PUT_CONFIG = """
-- Create the run (state_version 0, outcome_reports 0) or replace its config, keeping its state.
-- KEYS[1] pcm:{RUN}:config  (hash: config, state_version, outcome_reports, revision)
-- ARGV[1] the RunConfig as JSON
-- Returns 1 if the run was created, 0 if it existed.
local created = redis.call('HSETNX', KEYS[1], 'state_version', '0')
if created == 1 then
  redis.call('HSET', KEYS[1], 'outcome_reports', '0', 'revision', '0')
end
redis.call('HSET', KEYS[1], 'config', ARGV[1])
return created
"""

COMMIT_SELECT = """
-- Commit one selection, compare-and-set, reading the state in the same call when it moved on:
-- the selector computed on a copy of the state (the last it read or committed), and a stale
-- copy is answered with the current one, so a select costs one round trip while the copy holds.
-- KEYS[1]         pcm:{RUN}:config   (hash: config, state_version, outcome_reports, revision)
-- KEYS[2]         pcm:{RUN}:req:REQUEST_ID
-- KEYS[3]         pcm:{RUN}:reqs     (zset: request_id -> expiry ms)
-- KEYS[4]         pcm:{RUN}:history  (stream)
-- KEYS[5]         pcm:{RUN}:tasks    (set of task ids)
-- KEYS[6]         pcm:{RUN}:sels     (zset: selection_id -> expiry ms)
-- KEYS[6+i]       pcm:{RUN}:state:TASK_i, i = 1..n
-- ARGV[1]         expected state_version
-- ARGV[2]         new state_version
-- ARGV[3]         request_id
-- ARGV[4]         idempotency record ('S' + packed answer, with the request digest)
-- ARGV[5]         record TTL, seconds
-- ARGV[6]         history entry (JSON)
-- ARGV[7]         history MAXLEN (approximate trim)
-- ARGV[8]         expected revision, or '' (not compared)
-- ARGV[9]         expected config (JSON, as stored), or '' (not compared)
-- ARGV[10]        a, the number of selection ids to register
-- ARGV[10+j]      selection id j, j = 1..a
-- ARGV[10+a+i]    TASK_i, i = 1..n
-- ARGV[10+a+n+i]  TaskState of TASK_i (JSON)
-- Returns {'missing'} (no such run), {'replay', stored record}, {'committed'}, or
-- {'conflict', config, state_version, outcome_reports, revision, state_1, ..., state_n}: the
-- run's current state (state_i '' where TASK_i has none), nothing written.
""" + _REMEMBER + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local stored = redis.call('GET', KEYS[2])
if stored then
  return {'replay', stored}
end
local head = redis.call('HMGET', KEYS[1], 'state_version', 'revision', 'config')
if tonumber(head[1]) ~= tonumber(ARGV[1])
    or (ARGV[8] ~= '' and tonumber(head[2] or '0') ~= tonumber(ARGV[8]))
    or (ARGV[9] ~= '' and head[3] ~= ARGV[9]) then
  local run = redis.call('HMGET', KEYS[1], 'config', 'state_version', 'outcome_reports',
                         'revision')
  local reply = {'conflict', run[1] or '', run[2] or '0', run[3] or '0', run[4] or '0'}
  for i = 1, #KEYS - 6 do
    reply[5 + i] = redis.call('GET', KEYS[6 + i]) or ''
  end
  return reply
end
local a = tonumber(ARGV[10])
local n = #KEYS - 6
for i = 1, n do
  redis.call('SET', KEYS[6 + i], ARGV[10 + a + n + i])
  redis.call('SADD', KEYS[5], ARGV[10 + a + i])
end
redis.call('HSET', KEYS[1], 'state_version', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'revision', 1)
remember(KEYS[2], KEYS[3], ARGV[3], ARGV[4], ARGV[5])
register(KEYS[6], {unpack(ARGV, 11, 10 + a)}, ARGV[5])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'e', ARGV[6])
return {'committed'}
"""

RECONCILE_SELECT = """
-- Replace a committed selection's stored answer and write its tasks' states (compare-and-set on
-- the run's revision): a client trained on other masks than the stored answer's (it selected
-- locally while the commit's answer was lost), so the run counts its masks instead.
-- KEYS[1]        pcm:{RUN}:config   (hash: config, state_version, outcome_reports, revision)
-- KEYS[2]        pcm:{RUN}:req:REQUEST_ID
-- KEYS[3]        pcm:{RUN}:reqs     (zset: request_id -> expiry ms)
-- KEYS[4]        pcm:{RUN}:history  (stream)
-- KEYS[5]        pcm:{RUN}:sels     (zset: selection_id -> expiry ms)
-- KEYS[5+i]      pcm:{RUN}:state:TASK_i, i = 1..n (tasks the run already has)
-- ARGV[1]        expected revision
-- ARGV[2]        request_id
-- ARGV[3]        the new idempotency record ('S' + packed answer, same digest)
-- ARGV[4]        record TTL, seconds
-- ARGV[5]        history entry (JSON)
-- ARGV[6]        history MAXLEN (approximate trim)
-- ARGV[7]        a, the number of selection ids to register
-- ARGV[7+j]      selection id j, j = 1..a
-- ARGV[7+a+i]    TaskState of TASK_i (JSON), i = 1..n
-- Returns {'missing'} (no such run), {'gone'} (no select record), {'conflict'} or
-- {'committed'}. state_version does not change: the batch was counted once already.
""" + _REMEMBER + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local stored = redis.call('GET', KEYS[2])
if not stored or string.sub(stored, 1, 1) ~= 'S' then
  return {'gone'}
end
if tonumber(redis.call('HGET', KEYS[1], 'revision') or '0') ~= tonumber(ARGV[1]) then
  return {'conflict'}
end
local a = tonumber(ARGV[7])
for i = 1, #KEYS - 5 do
  redis.call('SET', KEYS[5 + i], ARGV[7 + a + i])
end
redis.call('HINCRBY', KEYS[1], 'revision', 1)
remember(KEYS[2], KEYS[3], ARGV[2], ARGV[3], ARGV[4])
register(KEYS[5], {unpack(ARGV, 8, 7 + a)}, ARGV[4])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'e', ARGV[5])
return {'committed'}
"""

RECORD_REPORT = """
-- Record one outcome report, once per request_id.
-- KEYS[1] pcm:{RUN}:config   (hash: config, state_version, outcome_reports, revision)
-- KEYS[2] pcm:{RUN}:req:REQUEST_ID
-- KEYS[3] pcm:{RUN}:reqs     (zset: request_id -> expiry ms)
-- KEYS[4] pcm:{RUN}:history  (stream)
-- KEYS[5] pcm:{RUN}:sels     (zset: selection_id -> expiry ms)
-- ARGV[1] request_id
-- ARGV[2] record TTL, seconds
-- ARGV[3] history entry (JSON)
-- ARGV[4] history MAXLEN (approximate trim)
-- ARGV[5] the report's selection_id, which must be registered; '' = not checked
-- ARGV[6] the idempotency record ('R' + the request digest)
-- Returns {'missing'} (no such run), {'stored', stored record}, {'no_selection'} or
-- {'recorded'}.
""" + _REMEMBER + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local stored = redis.call('GET', KEYS[2])
if stored then
  return {'stored', stored}
end
if ARGV[5] ~= '' then
  local expiry = redis.call('ZSCORE', KEYS[5], ARGV[5])
  if not expiry or tonumber(expiry) <= now_ms() then
    return {'no_selection'}
  end
end
redis.call('HINCRBY', KEYS[1], 'outcome_reports', 1)
remember(KEYS[2], KEYS[3], ARGV[1], ARGV[6], ARGV[2])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[3])
return {'recorded'}
"""

DELETE_RUN = """
-- Delete every key of a run, provided the caller's lists of tasks and requests are complete.
-- KEYS[1]        pcm:{RUN}:config
-- KEYS[2]        pcm:{RUN}:tasks    (set of task ids)
-- KEYS[3]        pcm:{RUN}:reqs     (zset: request_id -> expiry ms)
-- KEYS[4]        pcm:{RUN}:history
-- KEYS[5]        pcm:{RUN}:sels     (zset: selection_id -> expiry ms)
-- KEYS[6..]      pcm:{RUN}:state:TASK for each listed task, then pcm:{RUN}:req:ID for each
--                listed request
-- ARGV[1]        n, the number of listed tasks
-- ARGV[1+i]      TASK_i, i = 1..n
-- ARGV[1+n+j]    request id j
-- Returns -1 (deletes nothing) if the run has a task or request the caller did not list (it
-- changed since the caller read them: read again and retry), else 1 if the run existed, 0 if not.
local n = tonumber(ARGV[1])
local tasks = {}
for i = 2, n + 1 do
  tasks[ARGV[i]] = true
end
for _, task in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if not tasks[task] then
    return -1
  end
end
local requests = {}
for i = n + 2, #ARGV do
  requests[ARGV[i]] = true
end
for _, request in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if not requests[request] then
    return -1
  end
end
local existed = redis.call('EXISTS', KEYS[1])
for i = 1, #KEYS, 1000 do
  redis.call('UNLINK', unpack(KEYS, i, math.min(i + 999, #KEYS)))
end
return existed
"""
