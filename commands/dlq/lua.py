"""Server-side Lua for the ``redis-list`` backend: filters, scans, requeue batches, restore, trim.

Every script touches a bounded number of entries per call, so Redis never blocks for
more than a few milliseconds. Each one is atomic: the lists and the task counters in
Redis always agree, whatever instant the bot dies at.
"""

from __future__ import annotations

__all__ = ["SCAN", "REQUEUE_BATCH", "RESTORE", "TRIM_POP", "LEASE_RENEW", "LEASE_RELEASE"]

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

local function to_epoch(v)
  if type(v) == 'number' then
    if v > 1e11 then return v / 1000 end
    return v
  end
  if type(v) ~= 'string' then return nil end
  local y, mo, d, h, mi, s = string.match(v, '^(%d%d%d%d)-(%d%d)-(%d%d)[T ](%d%d):(%d%d):(%d%d)')
  if not y then return nil end
  local t = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 + tonumber(h) * 3600
            + tonumber(mi) * 60 + tonumber(s)
  local frac = string.match(v, '^%d+%-%d+%-%d+[T ]%d+:%d+:%d+(%.%d+)')
  if frac then t = t + tonumber('0' .. frac) end
  local sign, oh, om = string.match(v, '([%+%-])(%d%d):?(%d%d)$')
  if sign and #v > 19 then
    local off = tonumber(oh) * 3600 + tonumber(om) * 60
    if sign == '+' then t = t - off else t = t + off end
  end
  return t
end

local function decode(raw)
  local ok, e = pcall(cjson.decode, raw)
  if ok and type(e) == 'table' then return e end
  return nil
end

local function matches(raw, f)
  if f.any then return true end
  if f.type and not string.find(raw, f.type, 1, true) then return false end
  local e = decode(raw)
  if not e then return false end
  if f.type and e.type ~= f.type then return false end
  if f.error then
    if type(e.error) ~= 'string' or not string.find(string.lower(e.error), f.error, 1, true) then return false end
  end
  if f.ids and not f.ids[tostring(e.id)] then return false end
  if f.before then
    local t = to_epoch(e.failedAt)
    if not t or t >= f.before then return false end
  end
  return true
end
"""

# SCAN: look at `count` entries starting `offset` from the oldest end; count matches and group them.
# KEYS[1] dead   ARGV: filter json, offset, count, samples wanted, group key max length
# Returns {stats json, sample raw, sample raw, ...}
SCAN = _MATCH + r"""
local f = cjson.decode(ARGV[1])
local offset, count, want, keylen = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local items = redis.call('LRANGE', KEYS[1], -(offset + count), -(offset + 1))
local stats = {scanned = #items, matched = 0, opaque = 0, types = {}, errors = {}}
local samples = {}
-- LRANGE returns left-to-right (newest first); walk from the oldest.
for i = #items, 1, -1 do
  local raw = items[i]
  if matches(raw, f) then
    stats.matched = stats.matched + 1
    local e = decode(raw)
    local ty, er = '(opaque)', '(opaque)'
    if e then
      ty = (type(e.type) == 'string') and e.type or '(none)'
      er = (type(e.error) == 'string') and string.sub(e.error, 1, keylen) or '(none)'
      local t = to_epoch(e.failedAt)
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
local f = cjson.decode(redis.call('HGET', task, 'filter_lua'))
local items = redis.call('RPOP', KEYS[1], want)
if not items then
  redis.call('HSET', task, 'total', scanned)   -- the list is shorter than it was: someone else took entries
  return {0, 0, 1}
end
local go, stay = {}, {}
for _, raw in ipairs(items) do
  if (limit < 0 or moved + #go < limit) and matches(raw, f) then go[#go + 1] = raw else stay[#stay + 1] = raw end
end
for i = 1, #go, 1000 do redis.call('LPUSH', KEYS[2], unpack(go, i, math.min(i + 999, #go))) end
for i = 1, #stay, 1000 do redis.call('RPUSH', KEYS[3], unpack(stay, i, math.min(i + 999, #stay))) end
redis.call('HINCRBY', task, 'scanned', #items)
redis.call('HINCRBY', task, 'moved', #go)
redis.call('HSET', task, 'updated_at', ARGV[3])
local more = (scanned + #items < total) and (limit < 0 or moved + #go < limit)
return {#items, #go, more and 0 or 1}
"""

# RESTORE: put up to ARGV[1] held entries back at the oldest end of the dead list, in their order.
# KEYS: held, dead. Returns how many were moved (0 when nothing is left).
RESTORE = r"""
local n = 0
for i = 1, tonumber(ARGV[1]) do
  if not redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'RIGHT') then break end
  n = n + 1
end
return n
"""

# TRIM_POP: remove the ARGV[1] oldest entries only if they are still exactly the archived ones.
# KEYS: dead, trim task. ARGV: n, sha256 hex of the concatenated entries (as archived).
# Returns 1 removed, 0 changed (someone touched the oldest end: nothing removed).
TRIM_POP = r"""
local n = tonumber(ARGV[1])
local items = redis.call('LRANGE', KEYS[1], -n, -1)
if #items ~= n then return 0 end
local joined = {}
for i = #items, 1, -1 do joined[#joined + 1] = string.len(items[i]) .. ':' .. items[i] end
if redis.sha1hex(table.concat(joined)) ~= ARGV[2] then return 0 end
redis.call('LTRIM', KEYS[1], 0, -(n + 1))
redis.call('HINCRBY', KEYS[2], 'dropped', n)
return 1
"""

LEASE_RENEW = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

LEASE_RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
