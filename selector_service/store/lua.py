"""Lua scripts of the Redis phase-state store (selector_service/store/redis_store.py).

Each script is registered once with ``redis.Redis.register_script`` and run with EVALSHA. Every
key a script touches is passed in KEYS (none is built inside a script), and all keys of a run
share the hash tag ``{RUN}``, so a script stays on one Redis Cluster slot. The scripts do only
compare-and-set and bookkeeping; the PCM math stays in Python (selector_service/core).

Idempotency records (``pcm:{RUN}:req:REQUEST_ID``) are strings whose first byte is the request
kind: ``S`` (select; the packed SelectResponse follows) or ``R`` (outcome report). Each record is
also listed in the run's sorted set ``pcm:{RUN}:reqs`` (member request_id, score its expiry in
ms, by Redis' clock), so that ``delete_run`` can delete every record of the run atomically
without SCAN; entries past their expiry are pruned from the set on every write.
"""

from __future__ import annotations

# Shared by the scripts that store an idempotency record.
_REMEMBER = """
local function remember(req_key, reqs_key, request_id, record, ttl_s)
  redis.call('SET', req_key, record, 'EX', ttl_s)
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', reqs_key, '-inf', now_ms)
  redis.call('ZADD', reqs_key, now_ms + tonumber(ttl_s) * 1000, request_id)
end
"""

PUT_CONFIG = """
-- Create the run (state_version 0, outcome_reports 0) or replace its config, keeping its state.
-- KEYS[1] pcm:{RUN}:config  (hash: config, state_version, outcome_reports)
-- ARGV[1] the RunConfig as JSON
-- Returns 1 if the run was created, 0 if it existed.
local created = redis.call('HSETNX', KEYS[1], 'state_version', '0')
if created == 1 then
  redis.call('HSET', KEYS[1], 'outcome_reports', '0')
end
redis.call('HSET', KEYS[1], 'config', ARGV[1])
return created
"""

COMMIT_SELECT = """
-- Compare-and-set commit of one selection.
-- KEYS[1]      pcm:{RUN}:config   (hash: config, state_version, outcome_reports)
-- KEYS[2]      pcm:{RUN}:req:REQUEST_ID
-- KEYS[3]      pcm:{RUN}:reqs     (zset: request_id -> expiry ms)
-- KEYS[4]      pcm:{RUN}:history  (stream)
-- KEYS[5]      pcm:{RUN}:tasks    (set of task ids)
-- KEYS[5+i]    pcm:{RUN}:state:TASK_i, i = 1..n
-- ARGV[1]      expected state_version
-- ARGV[2]      new state_version
-- ARGV[3]      request_id
-- ARGV[4]      idempotency record ('S' + packed answer)
-- ARGV[5]      record TTL, seconds
-- ARGV[6]      history entry (JSON)
-- ARGV[7]      history MAXLEN (approximate trim)
-- ARGV[7+i]    TASK_i, i = 1..n
-- ARGV[7+n+i]  TaskState of TASK_i (JSON)
-- Returns {'missing'} (no such run), {'replay', stored record}, {'conflict'} or {'committed'}.
""" + _REMEMBER + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local stored = redis.call('GET', KEYS[2])
if stored then
  return {'replay', stored}
end
local version = tonumber(redis.call('HGET', KEYS[1], 'state_version'))
if version ~= tonumber(ARGV[1]) then
  return {'conflict'}
end
local n = #KEYS - 5
for i = 1, n do
  redis.call('SET', KEYS[5 + i], ARGV[7 + n + i])
  redis.call('SADD', KEYS[5], ARGV[7 + i])
end
redis.call('HSET', KEYS[1], 'state_version', ARGV[2])
remember(KEYS[2], KEYS[3], ARGV[3], ARGV[4], ARGV[5])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'e', ARGV[6])
return {'committed'}
"""

RECORD_REPORT = """
-- Record one outcome report, once per request_id.
-- KEYS[1] pcm:{RUN}:config   (hash: config, state_version, outcome_reports)
-- KEYS[2] pcm:{RUN}:req:REQUEST_ID
-- KEYS[3] pcm:{RUN}:reqs     (zset: request_id -> expiry ms)
-- KEYS[4] pcm:{RUN}:history  (stream)
-- ARGV[1] request_id
-- ARGV[2] record TTL, seconds
-- ARGV[3] history entry (JSON)
-- ARGV[4] history MAXLEN (approximate trim)
-- Returns {'missing'} (no such run), {'stored', kind of the stored record} or {'recorded'}.
""" + _REMEMBER + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local stored = redis.call('GET', KEYS[2])
if stored then
  return {'stored', string.sub(stored, 1, 1)}
end
redis.call('HINCRBY', KEYS[1], 'outcome_reports', 1)
remember(KEYS[2], KEYS[3], ARGV[1], 'R', ARGV[2])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[3])
return {'recorded'}
"""

DELETE_RUN = """
-- Delete every key of a run, provided the caller's lists of tasks and requests are complete.
-- KEYS[1]        pcm:{RUN}:config
-- KEYS[2]        pcm:{RUN}:tasks    (set of task ids)
-- KEYS[3]        pcm:{RUN}:reqs     (zset: request_id -> expiry ms)
-- KEYS[4]        pcm:{RUN}:history
-- KEYS[5..]      pcm:{RUN}:state:TASK for each listed task, then pcm:{RUN}:req:ID for each
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
