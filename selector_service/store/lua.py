"""Lua scripts of the Redis phase-state store (selector_service/store/redis_store.py).

Each script is registered once with ``redis.Redis.register_script`` and run with EVALSHA. Every
key a script touches is passed in KEYS (none is built inside a script), and all keys of a run
share the hash tag ``{RUN}``, so a script stays on one Redis Cluster slot. The selection is
computed in Python (selector_service/core); FOLD_SELECT folds what it changes into the stored
task states (the EMA of the scores and of the `signal` reference re-applied to the stored
values, the counters added), the same operations as core/fold.py in the same order, and does
the bookkeeping; the other scripts do bookkeeping only. Task states and updates are binary
(store/state_codec.py), read and written with Redis' `struct` library.

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
local function remember(req_key, reqs_key, request_id, record, ttl_s, now)
  -- now: Redis' clock in ms (read here if nil)
  redis.call('SET', req_key, record, 'EX', ttl_s)
  now = now or now_ms()
  redis.call('ZREMRANGEBYSCORE', reqs_key, '-inf', now)
  redis.call('ZADD', reqs_key, now + tonumber(ttl_s) * 1000, request_id)
end
local function register(sels_key, selection_ids, ttl_s, now)
  now = now or now_ms()
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

# Task states and batch updates (store/state_codec.py has their layout), and the fold: the same
# operations, in the same order, as selector_service/core/fold.py's `fold_task`, so that a
# state folded here is bit for bit the one Python computes (tests check it on random inputs).
_STATE = r"""
local CHUNK = 200  -- doubles per struct call (Lua's C stack takes a few thousand values)
local FORMATS = {}
local function format(k)
  local f = FORMATS[k]
  if f == nil then
    f = '<' .. string.rep('d', k)
    FORMATS[k] = f
  end
  return f
end
local function read_doubles(s, pos, n)
  -- the first CHUNK values are unpacked into the table returned (no copy), the rest appended
  local k = math.min(n, CHUNK)
  local out = {struct.unpack(format(k), s, pos)}
  pos = out[k + 1]
  out[k + 1] = nil
  local i = k
  while i < n do
    k = math.min(n - i, CHUNK)
    local vals = {struct.unpack(format(k), s, pos)}
    for j = 1, k do
      out[i + j] = vals[j]
    end
    pos = vals[k + 1]
    i = i + k
  end
  return out, pos
end
local function write_doubles(parts, values, n)
  local i = 0
  while i < n do
    local k = math.min(n - i, CHUNK)
    parts[#parts + 1] = struct.pack(format(k), unpack(values, i + 1, i + k))
    i = i + k
  end
end
local function empty_state(p)
  local st = {p = p, d = 0, trajectories = 0, skipped = 0, version = 0, wbatches = 0,
              scores = {}, observations = {}, total = {}, kept = {}, wsum = {}, wcount = {}}
  for i = 1, p do
    st.scores[i] = 0 / 0
    st.observations[i] = 0
    st.total[i] = 0
    st.kept[i] = 0
    st.wsum[i] = 0
    st.wcount[i] = 0
  end
  return st
end
local function decode_json_state(raw)
  -- a state as earlier versions stored it (TaskState.to_dict); cjson reads numbers exactly
  local j = cjson.decode(raw)
  local p = #j.scores
  local st = empty_state(p)
  st.trajectories, st.skipped, st.version = j.trajectories, j.skipped_trajectories, j.version
  for i = 1, p do
    if j.scores[i] ~= cjson.null then
      st.scores[i] = j.scores[i]
    end
    st.observations[i] = j.observations[i]
    st.total[i] = j.chunks_total[i]
    st.kept[i] = j.chunks_kept[i]
  end
  local rows = j.signal_ref
  if rows ~= nil and rows ~= cjson.null then
    local d = 1
    for i = 1, p do
      if rows[i] ~= cjson.null then
        d = #rows[i]
        break
      end
    end
    st.d, st.ref = d, {}
    for i = 1, p do
      for k = 1, d do
        if rows[i] == cjson.null then
          st.ref[(i - 1) * d + k] = 0 / 0
        else
          st.ref[(i - 1) * d + k] = rows[i][k]
        end
      end
    end
  end
  return st
end
local function decode_state(raw)
  if string.sub(raw, 1, 1) ~= 'T' then
    return decode_json_state(raw)
  end
  local _, format, p, d, pos = struct.unpack('<c1BHI4', raw)
  local windowed = format == 2
  local head
  head, pos = read_doubles(raw, pos, windowed and 4 or 3)
  local st = {p = p, d = d, trajectories = head[1], skipped = head[2], version = head[3],
              wbatches = windowed and head[4] or 0}
  st.scores, pos = read_doubles(raw, pos, p)
  st.observations, pos = read_doubles(raw, pos, p)
  st.total, pos = read_doubles(raw, pos, p)
  st.kept, pos = read_doubles(raw, pos, p)
  if windowed then
    st.wsum, pos = read_doubles(raw, pos, p)
    st.wcount, pos = read_doubles(raw, pos, p)
  else
    st.wsum, st.wcount = {}, {}
    for i = 1, p do
      st.wsum[i] = 0
      st.wcount[i] = 0
    end
  end
  if d > 0 then
    st.ref = read_doubles(raw, pos, p * d)
  end
  return st
end
local function encode_state(st)
  -- format 2 only while the score window holds evidence (state_codec.py's encode_state)
  local windowed = st.wbatches > 0
  for i = 1, st.p do
    if st.wsum[i] ~= 0 or st.wcount[i] ~= 0 then
      windowed = true
    end
  end
  local parts = {struct.pack('<c1BHI4', 'T', windowed and 2 or 1, st.p, st.d)}
  if windowed then
    write_doubles(parts, {st.trajectories, st.skipped, st.version, st.wbatches}, 4)
  else
    write_doubles(parts, {st.trajectories, st.skipped, st.version}, 3)
  end
  write_doubles(parts, st.scores, st.p)
  write_doubles(parts, st.observations, st.p)
  write_doubles(parts, st.total, st.p)
  write_doubles(parts, st.kept, st.p)
  if windowed then
    write_doubles(parts, st.wsum, st.p)
    write_doubles(parts, st.wcount, st.p)
  end
  if st.d > 0 then
    write_doubles(parts, st.ref, st.p * st.d)
  end
  return table.concat(parts)
end
local function decode_update(raw)
  local _, _, p, d, pos = struct.unpack('<c1BHI4', raw)
  local head
  head, pos = read_doubles(raw, pos, 2)
  local up = {p = p, d = d, trajectories = head[1], skipped = head[2]}
  up.v, pos = read_doubles(raw, pos, p)
  up.observed, pos = read_doubles(raw, pos, p)
  up.total, pos = read_doubles(raw, pos, p)
  up.kept, pos = read_doubles(raw, pos, p)
  if d > 0 then
    up.present, pos = read_doubles(raw, pos, p)
    up.mean = read_doubles(raw, pos, p * d)
  end
  return up
end
local function power(base, n)
  -- base ^ n by binary exponentiation, as core/weights.py's ema_decay
  local out, square = 1.0, base
  while n > 0 do
    if n % 2 == 1 then
      out = out * square
    end
    square = square * square
    n = (n - n % 2) / 2
  end
  return out
end
local function fold(st, up, eta, bias_corrected, window)
  -- core/fold.py's fold_task; nil if the state has another number of phases
  if st == nil then
    st = empty_state(up.p)
  end
  if st.p ~= up.p then
    return nil
  end
  local q = 1.0 - eta
  local refresh = false
  if window > 0 then  -- fold_scores: the window takes the evidence; full (or no score yet): refresh
    local unscored = true
    for i = 1, up.p do
      if st.scores[i] == st.scores[i] then
        unscored = false
      end
    end
    st.wbatches = st.wbatches + 1
    refresh = st.wbatches >= window or unscored
  end
  for i = 1, up.p do
    if up.observed[i] ~= 0 then
      local s = st.scores[i]
      if window > 0 then
        st.wsum[i] = st.wsum[i] + up.v[i]
        st.wcount[i] = st.wcount[i] + 1
      elseif s ~= s then  -- never observed: the first observation initialises
        st.scores[i] = up.v[i]
      elseif bias_corrected then
        local n = st.observations[i]
        st.scores[i] = (q * s * (1.0 - power(q, n)) + eta * up.v[i]) / (1.0 - power(q, n + 1))
      else
        st.scores[i] = q * s + eta * up.v[i]
      end
      st.observations[i] = st.observations[i] + 1
    end
    st.total[i] = st.total[i] + up.total[i]
    st.kept[i] = st.kept[i] + up.kept[i]
  end
  if refresh then  -- each phase's mean evidence in the window; 0 without any (NaN: never)
    for i = 1, up.p do
      if st.wcount[i] > 0 then
        st.scores[i] = st.wsum[i] / st.wcount[i]
      elseif st.scores[i] == st.scores[i] then
        st.scores[i] = 0.0
      end
      st.wsum[i] = 0
      st.wcount[i] = 0
    end
    st.wbatches = 0
  end
  if up.d > 0 then
    local d = up.d
    if st.d ~= d then
      st.d, st.ref = d, {}
      for k = 1, up.p * d do
        st.ref[k] = 0 / 0
      end
    end
    for i = 1, up.p do
      if up.present[i] ~= 0 then
        local base = (i - 1) * d
        local first = st.ref[base + 1]
        if first == first then
          for k = base + 1, base + d do
            st.ref[k] = q * st.ref[k] + eta * up.mean[k]
          end
        else
          for k = base + 1, base + d do
            st.ref[k] = up.mean[k]
          end
        end
      end
    end
  end
  st.trajectories = st.trajectories + up.trajectories
  st.skipped = st.skipped + up.skipped
  st.version = st.version + 1
  return st
end
"""

FOLD_STATES = """
-- Fold batch updates into task states and return the results, writing nothing: the fold of
-- FOLD_SELECT on its own (tests compare it with core/fold.py's).
-- KEYS: none
-- ARGV[1]     the fold's parameters (eta f64, bias-corrected u8, score window u16)
-- ARGV[2i]    a task state ('' for none), i = 1..n
-- ARGV[2i+1]  the task's update
-- Returns the n folded states ('' where the phases differ).
""" + _STATE + """
local eta, bias, window = struct.unpack('<dBH', ARGV[1])
local out = {}
for i = 1, (#ARGV - 1) / 2 do
  local st = nil
  if ARGV[2 * i] ~= '' then
    st = decode_state(ARGV[2 * i])
  end
  local folded = fold(st, decode_update(ARGV[2 * i + 1]), eta, bias == 1, window)
  if folded == nil then
    out[i] = ''
  else
    out[i] = encode_state(folded)
  end
end
return out
"""

FOLD_SELECT = """
-- Commit one selection by folding its update into the stored task states, in commit order:
-- the selection was computed on a copy of the state (the last this selector read or was
-- answered), which may lack the last few commits; what the batch changes (score evidence,
-- counts, the reference's input) is applied to the state as stored now, so no commit waits
-- for or retries another. Refused (nothing written, the current state answered, the selector
-- recomputes once) only when the copy is older than the staleness bound, from another
-- incarnation of the run, or for another config.
-- KEYS[1]         pcm:{RUN}:config   (hash: config, state_version, outcome_reports, revision)
-- KEYS[2]         pcm:{RUN}:req:REQUEST_ID
-- KEYS[3]         pcm:{RUN}:reqs     (zset: request_id -> expiry ms)
-- KEYS[4]         pcm:{RUN}:history  (stream)
-- KEYS[5]         pcm:{RUN}:tasks    (set of task ids)
-- KEYS[6]         pcm:{RUN}:sels     (zset: selection_id -> expiry ms)
-- KEYS[6+i]       pcm:{RUN}:state:TASK_i, i = 1..n
-- ARGV[1]         the state_version the selection was computed on
-- ARGV[2]         the staleness bound (versions), or -1 (none)
-- ARGV[3]         request_id
-- ARGV[4]         idempotency record ('S' + packed answer, with the request digest)
-- ARGV[5]         offset in the record of its state_version (20 characters, 0-based)
-- ARGV[6]         offset in the record of its staleness (20 characters)
-- ARGV[7]         record TTL, seconds
-- ARGV[8]         history entry: a JSON object up to its last member, before '}'
-- ARGV[9]         history MAXLEN (approximate trim)
-- ARGV[10]        expected config (JSON, as stored), or '' (not compared)
-- ARGV[11]        the fold's parameters (eta f64, bias-corrected u8, score window u16)
-- ARGV[12]        a, the number of selection ids to register
-- ARGV[12+j]      selection id j, j = 1..a
-- ARGV[12+a+i]    TASK_i, i = 1..n
-- ARGV[12+a+n+i]  the batch's update of TASK_i
-- Returns {'missing'} (no such run), {'replay', stored record}, {'committed', state_version,
-- staleness, revision, state_1, ..., state_n} (the folded states), {'phases', TASK} (its
-- state has another number of phases; nothing written) or {'stale', config, state_version,
-- outcome_reports, revision, state_1, ..., state_n}: the run's current state (state_i '' where
-- TASK_i has none), nothing written.
""" + _REMEMBER + _STATE + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local stored = redis.call('GET', KEYS[2])
if stored then
  return {'replay', stored}
end
local n = #KEYS - 6
local head = redis.call('HMGET', KEYS[1], 'state_version', 'revision', 'config')
local current, read, bound = tonumber(head[1]), tonumber(ARGV[1]), tonumber(ARGV[2])
if read > current or (bound >= 0 and current - read > bound)
    or (ARGV[10] ~= '' and head[3] ~= ARGV[10]) then
  local run = redis.call('HMGET', KEYS[1], 'config', 'state_version', 'outcome_reports',
                         'revision')
  local reply = {'stale', run[1] or '', run[2] or '0', run[3] or '0', run[4] or '0'}
  for i = 1, n do
    reply[5 + i] = redis.call('GET', KEYS[6 + i]) or ''
  end
  return reply
end
local eta, bias, window = struct.unpack('<dBH', ARGV[11])
local a = tonumber(ARGV[12])
local folded = {}
for i = 1, n do
  local raw = redis.call('GET', KEYS[6 + i])
  local st = nil
  if raw then
    st = decode_state(raw)
  end
  local new = fold(st, decode_update(ARGV[12 + a + n + i]), eta, bias == 1, window)
  if new == nil then
    return {'phases', ARGV[12 + a + i]}
  end
  folded[i] = encode_state(new)
end
local version = current + 1
local staleness = current - read
for i = 1, n do
  redis.call('SET', KEYS[6 + i], folded[i])
  redis.call('SADD', KEYS[5], ARGV[12 + a + i])
end
redis.call('HSET', KEYS[1], 'state_version', version)
local revision = redis.call('HINCRBY', KEYS[1], 'revision', 1)
-- the record as sent, its state_version and staleness then set in place (SETRANGE writes
-- into the stored string: no copy of the record is made here)
local now = now_ms()
remember(KEYS[2], KEYS[3], ARGV[3], ARGV[4], ARGV[7], now)
redis.call('SETRANGE', KEYS[2], tonumber(ARGV[5]), string.format('%20d', version))
redis.call('SETRANGE', KEYS[2], tonumber(ARGV[6]), string.format('%20d', staleness))
register(KEYS[6], {unpack(ARGV, 13, 12 + a)}, ARGV[7], now)
local entry = ARGV[8] .. string.format('"state_version":%d,"staleness":%d}', version, staleness)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', 'e', entry)
local reply = {'committed', version, staleness, revision}
for i = 1, n do
  reply[4 + i] = folded[i]
end
return reply
"""

RECONCILE_SELECT = """
-- Replace a committed selection's stored answer and correct its tasks' kept-chunk counts: a
-- client trained on other masks than the stored answer's (it selected locally while the
-- commit's answer was lost), so the run counts its masks instead. The correction is added to
-- the counts as stored (it commutes with other commits); it applies only if the stored answer
-- is still the one the correction was computed against.
-- KEYS[1]        pcm:{RUN}:config   (hash: config, state_version, outcome_reports, revision)
-- KEYS[2]        pcm:{RUN}:req:REQUEST_ID
-- KEYS[3]        pcm:{RUN}:reqs     (zset: request_id -> expiry ms)
-- KEYS[4]        pcm:{RUN}:history  (stream)
-- KEYS[5]        pcm:{RUN}:sels     (zset: selection_id -> expiry ms)
-- KEYS[5+i]      pcm:{RUN}:state:TASK_i, i = 1..n (the batch's tasks)
-- ARGV[1]        SHA-1 (hex) of the stored record the correction was computed against
-- ARGV[2]        request_id
-- ARGV[3]        the new idempotency record ('S' + packed answer, same digest)
-- ARGV[4]        record TTL, seconds
-- ARGV[5]        history entry (JSON)
-- ARGV[6]        history MAXLEN (approximate trim)
-- ARGV[7]        a, the number of selection ids to register
-- ARGV[7+j]      selection id j, j = 1..a
-- ARGV[7+a+i]    the correction of TASK_i's chunks_kept, f64 per phase, i = 1..n
-- Returns {'missing'} (no such run), {'gone'} (no select record), {'conflict'} (the record
-- changed), {'no_state'} (a task of the batch has no state) or {'committed'}. state_version
-- does not change: the batch was counted once already.
""" + _REMEMBER + _STATE + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local stored = redis.call('GET', KEYS[2])
if not stored or string.sub(stored, 1, 1) ~= 'S' then
  return {'gone'}
end
if redis.sha1hex(stored) ~= ARGV[1] then
  return {'conflict'}
end
local a = tonumber(ARGV[7])
local n = #KEYS - 5
local states = {}
for i = 1, n do
  local raw = redis.call('GET', KEYS[5 + i])
  if not raw then
    return {'no_state'}
  end
  local st = decode_state(raw)
  local delta = read_doubles(ARGV[7 + a + i], 1, st.p)
  for p = 1, st.p do
    st.kept[p] = st.kept[p] + delta[p]
  end
  states[i] = encode_state(st)
end
for i = 1, n do
  redis.call('SET', KEYS[5 + i], states[i])
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
