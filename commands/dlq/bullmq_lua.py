"""The Lua scripts of the ``bullmq`` dead-letter backend (:mod:`commands.dlq.bullmq_jobs`), besides
BullMQ's own, which come from the ``bullmq`` package: the selection, the staged and the quick batch.

The backend sends them inside its MULTI/EXEC transactions. Redis does not undo a script's
earlier writes when a later command fails, so each checks what it needs (key types, the lease,
the task) before it writes anything; what each checks and returns is said above it.
"""

from __future__ import annotations

__all__ = ["FINGERPRINTS", "SELECT", "TYPES", "STAGE", "UNSTAGE", "GIVE_BACK", "CLAIM", "RETURN"]

# A job's fingerprint is its score in the failed set as Redis writes it: the time it finished (ms); a
# job that ran again and failed again has another one. KEYS failed set; ARGV ids. False: not there.
FINGERPRINTS = "return redis.call('ZMSCORE', KEYS[1], unpack(ARGV))"

# The unfiltered selection, a chunk at a time: KEYS failed set, pending list; ARGV start, count. Appends
# an [id, fingerprint] row per id (as the other selection does). Returns how many ids it read.
SELECT = """
local found = redis.call('ZRANGE', KEYS[1], ARGV[1], tonumber(ARGV[1]) + tonumber(ARGV[2]) - 1, 'WITHSCORES')
local rows = {}
for i = 1, #found, 2 do
  local id = found[i]
  if string.find(id, '[%c"\\\\/]') then rows[#rows + 1] = cjson.encode({id, found[i + 1]})
  else rows[#rows + 1] = '["' .. id .. '","' .. found[i + 1] .. '"]' end  -- what cjson writes, without it
end
for i = 1, #rows, 1000 do redis.call('RPUSH', KEYS[2], unpack(rows, i, math.min(i + 999, #rows))) end
return #rows
"""

# A Lua function: true when BullMQ's wait key is a list and its events key a stream (or either does not exist).
TYPES = """
local function types_ok(wait, events)
  local kind = redis.call('TYPE', wait)['ok']
  if kind ~= 'list' and kind ~= 'none' then return false end
  kind = redis.call('TYPE', events)['ok']
  return kind == 'stream' or kind == 'none'
end
"""

# One batch of an unfiltered requeue, staged for BullMQ's own moveJobsToWait (run next, in the same
# MULTI/EXEC, on ``batch``; then UNSTAGE). KEYS: lease, task, pending, failed, moving, journal, batch, wait,
# events. ARGV: token, n, now.
# Each of the next n pending ids still in the failed set with the fingerprint it was selected with goes
# from the failed set to ``moving``, scored by its place in the batch (1, 2, ...), so BullMQ moves them in the
# selection's order (oldest first, ties as ZRANGE orders them) whatever their scores (moveJobsToWait takes
# only scores 0..max double: a job staged with a negative or infinite score would never move); the batch is counted
# and dropped from the pending list; while ``moving`` still holds a batch (its move was refused), nothing
# new is staged. The staged batch is handed to moveJobsToWait by renaming ``moving`` to ``batch`` (UNSTAGE renames
# what it did not move back), and only when BullMQ's wait key is a list and its events key a stream (or
# none): moveJobsToWait writes to the jobs before its first XADD and removes them from its state key before
# it pushes them to wait, and Redis does not undo a script's writes, so either key of another type would
# leave the batch stripped of its failure or in no BullMQ state (TYPES). Returns 2 lost lease, 3 not a bulk
# task or a journaled batch to finish (stages nothing), 5 a key of the wrong type (stages nothing, hands
# nothing over), 1 nothing left or cancelling, 0 more to do.
STAGE = TYPES + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 2 end
if redis.call('HGET', KEYS[2], 'bulk') ~= '1' or redis.call('EXISTS', KEYS[6]) == 1 then return 3 end
if not types_ok(KEYS[8], KEYS[9]) then return 5 end
local function more()
  if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('RENAME', KEYS[5], KEYS[7]) end  -- to moveJobsToWait
  if redis.call('EXISTS', KEYS[3]) == 0 or redis.call('HGET', KEYS[2], 'status') == 'cancelling' then return 1 end
  return 0
end
if redis.call('EXISTS', KEYS[5]) == 1 then return more() end  -- a staged batch a refused write left: move it first
local rows = redis.call('LRANGE', KEYS[3], 0, tonumber(ARGV[2]) - 1)
local ids, selected = {}, {}
for i, raw in ipairs(rows) do
  local row = cjson.decode(raw)
  ids[i] = row[1]
  selected[i] = row[2]
end
local moved, scored = {}, {}
if #ids > 0 then
  local now = redis.call('ZMSCORE', KEYS[4], unpack(ids))
  for i, id in ipairs(ids) do
    if now[i] and now[i] == selected[i] then
      moved[#moved + 1] = id
      scored[#scored + 1] = #moved
      scored[#scored + 1] = id
    end
  end
  redis.call('LTRIM', KEYS[3], #rows, -1)
end
for i = 1, #moved, 1000 do
  local last = math.min(i + 999, #moved)
  redis.call('ZREM', KEYS[4], unpack(moved, i, last))
  redis.call('ZADD', KEYS[5], unpack(scored, 2 * i - 1, 2 * last))
end
redis.call('HINCRBY', KEYS[2], 'moved', #moved)
redis.call('HINCRBY', KEYS[2], 'scanned', #ids)
redis.call('HSET', KEYS[2], 'updated_at', ARGV[3])
return more()
"""
# After a staged batch's moveJobsToWait: what it did not move (it was refused) is staged again. KEYS: batch, moving.
UNSTAGE = "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[2]) end return 0"
# A Lua function: the sorted set ``from`` given back to ``to``: renamed when ``to`` does not exist, else each
# member ``to`` does not hold added with its score (ZADD NX: a member in both keeps ``to``'s score, its
# fingerprint; ZUNIONSTORE would sum the two), then ``from`` deleted.
GIVE_BACK = r"""
local function give_back(from, to)
  if redis.call('EXISTS', to) == 0 then redis.call('RENAME', from, to) return end
  local all = redis.call('ZRANGE', from, 0, -1, 'WITHSCORES')
  for i = 1, #all, 2000 do
    local args = {}
    for j = i, math.min(i + 1999, #all), 2 do args[#args + 1] = all[j + 1] args[#args + 1] = all[j] end
    redis.call('ZADD', to, 'NX', unpack(args))
  end
  redis.call('DEL', from)
end
"""

# The quick way through a batch of an unfiltered requeue (``_quick``), one MULTI/EXEC of three scripts:
# CLAIM, BullMQ's own moveJobsToWait, RETURN. moveJobsToWait is given ``batch``, a key that does not exist,
# as its state key, so it moves nothing unless CLAIM has made it the failed set: CLAIM renames the failed
# set to ``batch`` (O(1)) only when the next n pending rows are, id for id and score for score, the
# failed set's first n (what moveJobsToWait takes: ZRANGEBYSCORE 0..every LIMIT 0 n), so exactly the
# selected jobs move; RETURN renames the rest back before any other client runs and counts the batch
# only if moveJobsToWait did take them. A CLAIM that finds anything else (lease lost, a job gone, failed
# again, out of order, an id JSON escapes, a staged or journaled batch) or fails renames nothing: the
# batch then takes the staged way (STAGE). Redis runs the three whole or not at all.
#
# The comparison reads no row as JSON: with no backslash in the rows (no id JSON escapes), the rows
# joined and '"]["' read as '","' are '["id1","score1","id2",...]' exactly when the failed set's head,
# joined by '","', is the same ids and scores (each quote is then a separator on both sides).
# KEYS: lease, task, pending, failed, batch, journal, moving, claimed, wait, events. ARGV: token, n, every.
# Returns 'go', or why not ('lease': the lease is lost; 'types': BullMQ's wait or events key is of the wrong
# type, see STAGE).
CLAIM = GIVE_BACK + TYPES + r"""
redis.call('DEL', KEYS[8])
if redis.call('EXISTS', KEYS[5]) == 1 then give_back(KEYS[5], KEYS[4]) end  -- cannot be (RETURN gives it back), but never lose it
local function check()
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lease' end
  if redis.call('HGET', KEYS[2], 'bulk') ~= '1' or redis.call('HGET', KEYS[2], 'status') ~= 'running' then
    return 'task' end
  if redis.call('EXISTS', KEYS[6], KEYS[7]) > 0 then return 'in flight' end
  if not types_ok(KEYS[9], KEYS[10]) then return 'types' end
  local n = tonumber(ARGV[2])
  local rows = redis.call('LRANGE', KEYS[3], 0, n - 1)
  if #rows ~= n then return 'short' end
  local selected = table.concat(rows)
  if string.find(selected, '\\', 1, true) then return 'escaped' end
  local found = redis.call('ZRANGEBYSCORE', KEYS[4], 0, ARGV[3], 'LIMIT', 0, n, 'WITHSCORES')
  if #found ~= 2 * n then return 'gone' end
  if string.gsub(selected, '"%]%["', '","') ~= '["' .. table.concat(found, '","') .. '"]' then return 'changed' end
  return 'go'
end
local ok, verdict = pcall(check)
if ok and verdict == 'go' then
  redis.call('RENAME', KEYS[4], KEYS[5])
  redis.call('SET', KEYS[8], ARGV[2])
  return 'go'
end
return ok and verdict or 'error'
"""

# KEYS: batch, failed, claimed, task, pending. ARGV: now. The failed set's rest back, then (if CLAIM claimed
# the batch and moveJobsToWait took it: its first job is no longer failed) the batch counted and dropped.
# Returns 4 claimed but not moved (moveJobsToWait was refused), 3 not claimed, 1 nothing left, 0 more to do.
RETURN = GIVE_BACK + r"""
if redis.call('EXISTS', KEYS[1]) == 1 then give_back(KEYS[1], KEYS[2]) end
local n = tonumber(redis.call('GET', KEYS[3]))
if not n then return 3 end
redis.call('DEL', KEYS[3])
local first = cjson.decode(redis.call('LINDEX', KEYS[5], 0))[1]
if redis.call('ZSCORE', KEYS[2], first) then return 4 end
redis.call('LTRIM', KEYS[5], n, -1)
redis.call('HINCRBY', KEYS[4], 'moved', n)
redis.call('HINCRBY', KEYS[4], 'scanned', n)
redis.call('HSET', KEYS[4], 'updated_at', ARGV[1])
if redis.call('EXISTS', KEYS[5]) == 0 or redis.call('HGET', KEYS[4], 'status') == 'cancelling' then return 1 end
return 0
"""
