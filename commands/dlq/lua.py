"""Server-side Lua for the ``redis-list`` backend: filters, scans, requeue batches, restore, trim.

Every script touches a bounded number of entries per call, so Redis never blocks for
more than a few milliseconds. Each one is atomic: the lists and the task counters in
Redis always agree, whatever instant the bot dies at.
"""

from __future__ import annotations

__all__ = ["SCAN", "REQUEUE_BATCH", "RESTORE", "MERGE", "TRIM_POP", "TRIM_CUT", "TRIM_STATUS", "LEASE_TAKE",
           "LEASE_RENEW", "LEASE_RELEASE", "LEASE_HOLDER"]

# Shared: does one raw entry match filter f (decoded from JSON)? f.any short-circuits.
_MATCH = r"""
local function days_from_civil(y, m, d)
  y = (m <= 2) and (y - 1) or y
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function finite(v)
  if v ~= v or v == math.huge or v == -math.huge then return nil end
  return v
end

local function to_epoch(v)
  if type(v) == 'number' then
    if v > 1e11 then return finite(v / 1000) end
    return finite(v)
  end
  if type(v) ~= 'string' or #v > 64 then return nil end
  local y, mo, d, h, mi, s, rest = string.match(v, '^(%d%d%d%d)-(%d%d)-(%d%d)[T ](%d%d):(%d%d):(%d%d)(.*)$')
  if not y then return nil end
  local t = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 + tonumber(h) * 3600
            + tonumber(mi) * 60 + tonumber(s)
  -- The usual shapes, read at once; anything else below, as it always was.
  if rest == 'Z' or rest == '' then return t end
  local ms = string.match(rest, '^(%.%d+)Z$')
  if ms then return t + tonumber('0' .. ms) end
  local frac = string.match(v, '^%d+%-%d+%-%d+[T ]%d+:%d+:%d+(%.%d+)')
  if frac then t = t + tonumber('0' .. frac) end
  local sign, oh, om = string.match(v, '([%+%-])(%d%d):?(%d%d)$')
  if sign and #v > 19 then
    local off = tonumber(oh) * 3600 + tonumber(om) * 60
    if sign == '+' then t = t - off else t = t + off end
  end
  return t
end

-- Only a JSON object is read (as DeadEntry.parse does); anything else is opaque.
local function decode(raw)
  if not string.find(raw, '^%s*{') then return nil end
  local ok, e = pcall(cjson.decode, raw)
  if ok and type(e) == 'table' then return e end
  return nil
end

-- The id --id compares with: a string as is, an exact integer in decimal (entries.id_text).
local function id_text(v)
  if type(v) == 'string' then return v end
  if type(v) == 'number' and v == math.floor(v) and math.abs(v) < 9007199254740992 then
    return string.format('%d', v)
  end
  return nil
end

-- A field of an entry: e[name], or where the queue's `fields` setting points (f.paths: name -> keys).
local function field(e, f, name)
  local path = f.paths and f.paths[name]
  if not path then return e[name] end
  local v = e
  for _, k in ipairs(path) do
    if type(v) ~= 'table' then return nil end
    v = v[k]
  end
  return v
end

-- Does raw match f? Returns false, or true and the entry decoded (nil when f.any spared decoding it).
local function matches(raw, f)
  if f.any then return true end
  -- Cheap pre-check: the type as a JSON string, quotes and all, must appear, unless the entry has
  -- escapes that could spell it (a type with a quote or backslash in it is always escaped).
  if f.type and not string.find(raw, f.quoted_type, 1, true) and not string.find(raw, '\\', 1, true) then
    return false
  end
  local e = decode(raw)
  if not e then return false end
  if f.type and field(e, f, 'type') ~= f.type then return false end
  if f.error then
    local er = field(e, f, 'error')
    if type(er) ~= 'string' or not string.find(string.lower(er), f.error, 1, true) then return false end
  end
  if f.ids then
    local id = id_text(field(e, f, 'id'))
    if not id or not f.ids[id] then return false end
  end
  if f.before then
    local t = to_epoch(field(e, f, 'failedAt'))
    if not t or t >= f.before then return false end
  end
  return true, e
end

-- The filter document (Filters.to_lua) as the scripts use it.
local function filter_of(text)
  local f = cjson.decode(text)
  if f.type then f.quoted_type = '"' .. f.type .. '"' end
  return f
end
"""

# SCAN: look at `count` entries starting `offset` from the oldest end; count matches and group them.
# KEYS[1] dead   ARGV: filter json, offset, count, samples wanted, group key max length
# Returns {stats json, sample raw, sample raw, ...}
SCAN = _MATCH + r"""
local f = filter_of(ARGV[1])
local offset, count, want, keylen = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local items = redis.call('LRANGE', KEYS[1], -(offset + count), -(offset + 1))
local stats = {scanned = #items, matched = 0, opaque = 0, types = {}, errors = {}}
local samples = {}
-- LRANGE returns left-to-right (newest first); walk from the oldest.
for i = #items, 1, -1 do
  local raw = items[i]
  local ok, e = matches(raw, f)
  if ok then
    stats.matched = stats.matched + 1
    if f.any then e = decode(raw) end
    local ty, er = '(opaque)', '(opaque)'
    if e then
      local ft, fe = field(e, f, 'type'), field(e, f, 'error')
      ty = (type(ft) == 'string') and ft or '(none)'
      er = (type(fe) == 'string') and string.sub(fe, 1, keylen) or '(none)'
      local t = to_epoch(field(e, f, 'failedAt'))
      if t then
        if not stats.oldest or t < stats.oldest then stats.oldest = t end
        if not stats.newest or t > stats.newest then stats.newest = t end
      end
    else
      stats.opaque = stats.opaque + 1
    end
    stats.types[ty] = (stats.types[ty] or 0) + 1
    stats.errors[er] = (stats.errors[er] or 0) + 1
    if #samples < want then samples[#samples + 1] = raw end
  end
end
local reply = {cjson.encode(stats)}
for _, raw in ipairs(samples) do reply[#reply + 1] = raw end
return reply
"""

# REQUEUE_BATCH: move up to ARGV[1] of the task's original entries, oldest first.
# KEYS: dead, ready, held, task, lease   ARGV: batch, lease token
# Matches go to the ready list (LPUSH, where producers put work); the rest go, in order,
# onto `held` until RESTORE puts them back. Returns {scanned, moved, state}
# with state 0 = more to do, 1 = finished scanning, 2 = not ours (lease lost or not running).
REQUEUE_BATCH = _MATCH + r"""
if redis.call('GET', KEYS[5]) ~= ARGV[2] then return {0, 0, 2} end
local task = KEYS[4]
local status = redis.call('HGET', task, 'status')
if status ~= 'running' then return {0, 0, 1} end
local total = tonumber(redis.call('HGET', task, 'total'))
local scanned = tonumber(redis.call('HGET', task, 'scanned'))
local moved = tonumber(redis.call('HGET', task, 'moved'))
local limit = tonumber(redis.call('HGET', task, 'limit'))
local want = math.min(tonumber(ARGV[1]), total - scanned)
if want <= 0 or (limit >= 0 and moved >= limit) then return {0, 0, 1} end
local f = filter_of(redis.call('HGET', task, 'filter_lua'))
local items = redis.call('RPOP', KEYS[1], want)
if not items then
  redis.call('HSET', task, 'total', scanned)   -- the list is shorter than it was: someone else took entries
  return {0, 0, 1}
end
local go, stay = {}, {}
for _, raw in ipairs(items) do
  if (limit < 0 or moved + #go < limit) and matches(raw, f) then go[#go + 1] = raw else stay[#stay + 1] = raw end
end
-- Held entries lie as in the dead list, newest at the left (tasks of earlier versions: oldest at the left).
local hold = (redis.call('HGET', task, 'held_order') == 'newest-first') and 'LPUSH' or 'RPUSH'
for i = 1, #go, 1000 do redis.call('LPUSH', KEYS[2], unpack(go, i, math.min(i + 999, #go))) end
for i = 1, #stay, 1000 do redis.call(hold, KEYS[3], unpack(stay, i, math.min(i + 999, #stay))) end
redis.call('HINCRBY', task, 'scanned', #items)
redis.call('HINCRBY', task, 'moved', #go)
redis.call('HSET', task, 'updated_at', ARGV[3])
local more = (scanned + #items < total) and (limit < 0 or moved + #go < limit)
return {#items, #go, more and 0 or 1}
"""

# RESTORE: put up to ARGV[1] held entries (oldest at the left: tasks started by earlier versions) back at
# the oldest end of the dead list, in their order.
# KEYS: held, dead. Returns how many were moved (0 when nothing is left).
RESTORE = r"""
local n = 0
for i = 1, tonumber(ARGV[1]) do
  if not redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'RIGHT') then break end
  n = n + 1
end
return n
"""

# MERGE: put a task's held entries (newest at the left) back at the dead list's oldest end, in order.
# The dead list followed by the held list is the queue's dead letters in order; each call moves up to
# ARGV[1] entries across that boundary from the shorter side, and once the dead list is empty the held
# list becomes it (RENAME): a requeue that ran to its end puts back no more than what arrived meanwhile.
# KEYS: held, dead. Returns how many were moved (0 when the held list is gone).
MERGE = r"""
local n = tonumber(ARGV[1])
local h = redis.call('LLEN', KEYS[1])
if h == 0 then return 0 end
local d = redis.call('LLEN', KEYS[2])
if d == 0 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  return h
end
local items
if d < h then
  items = redis.call('RPOP', KEYS[2], math.min(n, d))  -- the oldest of the dead list first
  for i = 1, #items, 1000 do redis.call('LPUSH', KEYS[1], unpack(items, i, math.min(i + 999, #items))) end
else
  items = redis.call('LPOP', KEYS[1], math.min(n, h))  -- the newest held entry first
  for i = 1, #items, 1000 do redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 999, #items))) end
end
return #items
"""

# Shared by TRIM_POP and TRIM_CUT (KEYS: dead, trim task, lease). refusal(): -1 not ours (the lease is
# not `token`'s, or the task is not `task_id` running), 0 not now (`dropped` is not `ordinal`, or removing
# n would leave fewer than the task's `keep` newest), nil go on. drop(n): remove the n oldest and count
# them in `dropped`, in the same step.
_TRIM = r"""
local function refusal(token, task_id, ordinal, n)
  if redis.call('GET', KEYS[3]) ~= token then return -1 end
  if redis.call('HGET', KEYS[2], 'id') ~= task_id or redis.call('HGET', KEYS[2], 'status') ~= 'running' then
    return -1
  end
  if tonumber(redis.call('HGET', KEYS[2], 'dropped')) ~= tonumber(ordinal) then return 0 end
  if redis.call('LLEN', KEYS[1]) - n < tonumber(redis.call('HGET', KEYS[2], 'keep') or 0) then return 0 end
  return nil
end

local function drop(n)
  redis.call('LTRIM', KEYS[1], 0, -(n + 1))
  redis.call('HINCRBY', KEYS[2], 'dropped', n)
  return 1
end
"""

# TRIM_POP: remove the ARGV[1] oldest entries only if they are still exactly the archived ones,
# and only for the holder of the queue's lease, driving this trim task, and only if `dropped`
# equals ARGV[5], the ordinal they were archived as: batches sent together are removed in
# order, and none after one that was not.
# KEYS: dead, trim task, lease. ARGV: n, the entries' lengths in decimal, comma-separated, and
# (ARGV[6]) their bytes end to end, both newest first (the order LRANGE gives); lease token,
# task id, ordinal. Every entry is compared byte for byte with its slice of ARGV[6] (no hash:
# string.sub of an equal string finds Lua's interned copy, so each comparison costs one
# memcmp and allocates nothing).
# Returns 1 removed (and `dropped` grew by n in the same step), 0 the oldest end changed or
# removing them would leave fewer than the task's `keep` (a consumer took some since the trim
# measured the list; nothing removed), -1 not ours (lease lost or another task).
TRIM_POP = _TRIM + r"""
local n = tonumber(ARGV[1])
local refused = refusal(ARGV[3], ARGV[4], ARGV[5], n)
if refused then return refused end
local items = redis.call('LRANGE', KEYS[1], -n, -1)
if #items ~= n then return 0 end
local lengths = {}
for i = 1, n do lengths[i] = #items[i] end
if table.concat(lengths, ',') ~= ARGV[2] then return 0 end
local bytes, at = ARGV[6], 1
for i = 1, n do
  local stop = at + lengths[i]
  if string.sub(bytes, at, stop - 1) ~= items[i] then return 0 end
  at = stop
end
if at ~= #bytes + 1 then return 0 end
return drop(n)
"""

# TRIM_CUT: remove the ARGV[1] oldest entries, unread: it runs only inside MULTI, after WATCH of the
# dead list and a read of those entries under that watch (EXEC fails if anyone wrote the list since),
# so they are the archived ones. Checks the lease holder, the task, `dropped` (== ARGV[4]) and that
# the task's `keep` newest stay (a pop between the trim's LLEN and its WATCH is not seen by EXEC).
# KEYS: dead, trim task, lease. ARGV: n, lease token, task id, ordinal.
# Returns 1 removed (`dropped` grew by n in the same step), 0 not removed, -1 not ours.
TRIM_CUT = _TRIM + r"""
local n = tonumber(ARGV[1])
local refused = refusal(ARGV[2], ARGV[3], ARGV[4], n)
if refused then return refused end
return drop(n)
"""

# The one-task-per-queue lease (requeue and trim alike). Its value is "<token>|<run_id>":
# the run_id of the Redis server that granted it (INFO server). A lease granted before the
# server restarted names an older run_id: nobody holds it any more, and it may be taken.
_RUN_ID = r"""
local function run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end
"""

# LEASE_TAKE: KEYS: lease. ARGV: token, ttl ms. Returns {1, value} taken, {0, holder} held by another.
LEASE_TAKE = _RUN_ID + r"""
local run = run_id()
local held = redis.call('GET', KEYS[1])
if held then
  local granted = string.match(held, '|(%x+)$')
  if granted == nil or granted == run then return {0, held} end
end
local value = ARGV[1] .. '|' .. run
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, value}
"""

# LEASE_RENEW: KEYS: lease. ARGV: value, ttl ms. 1 renewed; 0 lost (taken, expired, or Redis restarted).
LEASE_RENEW = _RUN_ID + r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if string.match(ARGV[1], '|(%x+)$') ~= run_id() then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""

# LEASE_HOLDER: KEYS: lease. Returns {value or false, run_id of the server holding the key}.
LEASE_HOLDER = _RUN_ID + r"""
return {redis.call('GET', KEYS[1]), run_id()}
"""

LEASE_RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# TRIM_STATUS: close (or mark) a trim task, only for the lease holder driving it.
# KEYS: trim task, lease. ARGV: lease token, task id, status. Returns 1 done, 0 not ours.
TRIM_STATUS = r"""
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('HGET', KEYS[1], 'id') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
return 1
"""
