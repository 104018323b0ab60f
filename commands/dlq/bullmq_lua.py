"""The Lua scripts of the ``bullmq`` dead-letter backend (:mod:`commands.dlq.bullmq_jobs`), besides
BullMQ's own, which come from the ``bullmq`` package: fingerprints, and the unfiltered requeue's head
and batch.

The backend sends the batch scripts inside a MULTI/EXEC transaction with BullMQ's ``moveJobsToWait``.
Redis does not undo a script's earlier writes when a later command fails, so each checks what it
needs (key types, the lease, the task) before it writes anything; what each checks and returns is
said above it.
"""

from __future__ import annotations

__all__ = ["FINGERPRINTS", "HEAD", "TYPES", "GIVE_BACK", "ROOM", "LEND", "SETTLE", "STAGED", "UNSTAGE"]

# A job's fingerprint is its score in the failed set as Redis writes it: the time it finished (ms); a
# job that ran again and failed again has another one. KEYS failed set; ARGV ids. False: not there.
FINGERPRINTS = "return redis.call('ZMSCORE', KEYS[1], unpack(ARGV))"

# What an unfiltered requeue will move, read once when it starts: the failed set's oldest jobs that
# moveJobsToWait can take (scores 0..max double), up to the limit. KEYS failed set; ARGV limit (-1: none),
# every (max double). Returns {how many, the score of the last of them as Redis writes it, its id} ({0}: none).
HEAD = """
local n = redis.call('ZCOUNT', KEYS[1], 0, ARGV[2])
local limit = tonumber(ARGV[1])
if limit >= 0 and limit < n then n = limit end
if n == 0 then return {0} end
local last = redis.call('ZRANGEBYSCORE', KEYS[1], 0, ARGV[2], 'WITHSCORES', 'LIMIT', n - 1, 1)
return {n, last[2], last[1]}
"""

# A Lua function: true when each key given is of the type given after it, or does not exist (``types_ok(wait,
# 'list', events, 'stream')``).
TYPES = """
local function types_ok(...)
  local wanted = {...}
  for i = 1, #wanted, 2 do
    local kind = redis.call('TYPE', wanted[i])['ok']
    if kind ~= wanted[i + 1] and kind ~= 'none' then return false end
  end
  return true
end
"""

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

# A Lua function: how many jobs of the sorted set ``failed`` an unfiltered task may still take: those scored 0..head
# and, at the head score itself, not ordered after ``id``, the last job the task selected (Redis orders equal
# scores by member, byte by byte). A job that leaves the selection (removed, retried by someone else, failed
# again) is then never replaced by one at the head score that was not selected. ``id`` false (a task that did
# not keep it): every job scored 0..head.
ROOM = r"""
local function before(a, b)
  if a == b then return false end
  local i = 1
  while a:byte(i) == b:byte(i) do i = i + 1 end
  local x, y = a:byte(i), b:byte(i)
  return x == nil or (y ~= nil and x < y)
end
local function room(failed, head, id)
  if not id then return redis.call('ZCOUNT', failed, 0, head) end
  local below = redis.call('ZCOUNT', failed, '-inf', '(0')
  local score = redis.call('ZSCORE', failed, id)
  if score and tonumber(score) == tonumber(head) then return redis.call('ZRANK', failed, id) + 1 - below end
  local first = redis.call('ZCOUNT', failed, '-inf', '(' .. head)  -- the rank of the first job at the head score
  local lo, hi = 0, redis.call('ZCOUNT', failed, head, head)
  while lo < hi do                                                  -- how many of those come before id
    local mid = math.floor((lo + hi) / 2)
    if before(redis.call('ZRANGE', failed, first + mid, first + mid)[1], id) then lo = mid + 1 else hi = mid end
  end
  return first + lo - below
end
"""

# One batch of an unfiltered requeue (``_batch``) is one MULTI/EXEC of three scripts: LEND, BullMQ's own
# moveJobsToWait with count n and the task's head score as its timestamp bound, SETTLE. moveJobsToWait is
# given ``batch``, a key that does not exist, as its state key, so it moves nothing unless LEND has made it
# the failed set: LEND renames the failed set to ``batch`` (O(1)) only when the lease is the caller's, the
# task is running with at least n selected jobs left in the failed set (fewer than its ``left``, see ROOM: the
# others are counted as scanned and ``left`` lowered to what is there; fewer than n: 'short', nothing lent),
# and BullMQ's keys are of the types moveJobsToWait writes (or do not exist): wait a list, events a stream,
# the marker and the failed set sorted sets. moveJobsToWait writes to the jobs before its first XADD, removes
# them from the failed set before it pushes them to wait and adds to the marker last, and Redis does not undo
# a script's writes, so a key of another type would leave jobs stripped of their failure, in no BullMQ state,
# or waiting with no worker woken; so would a cap on the events stream (meta's opts.maxLenEvents, XADD's MAXLEN)
# that is not a whole number ('cap'). moveJobsToWait then takes the failed set's first n jobs scored 0..head,
# oldest first; SETTLE renames the set back before any other client runs and counts what left it. Redis runs
# the three whole or not at all.
# KEYS: lease, task, failed, batch, lent, wait, events, marker, meta. ARGV: token, n, head.
# Returns 'go', or why not: 'lease' (not the caller's), 'cancelling', 'task' (another task or head, not
# running), 'short' (fewer than n left), 'types', 'cap' (see above), 'error' (a key of the wrong type).
LEND = GIVE_BACK + TYPES + ROOM + r"""
redis.call('DEL', KEYS[5])
if redis.call('EXISTS', KEYS[4]) == 1 then give_back(KEYS[4], KEYS[3]) end  -- cannot be (SETTLE gives it back), but never lose it
local function check()
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lease' end
  local task = redis.call('HMGET', KEYS[2], 'head', 'status', 'left', 'head_id')
  if task[2] == 'cancelling' then return 'cancelling' end
  if task[1] ~= ARGV[3] or task[2] ~= 'running' or not tonumber(task[3]) then return 'task' end
  if not types_ok(KEYS[6], 'list', KEYS[7], 'stream', KEYS[8], 'zset', KEYS[3], 'zset') then return 'types' end
  if redis.call('TYPE', KEYS[9])['ok'] == 'hash' then  -- another type: moveJobsToWait refuses before any write
    local cap = redis.call('HGET', KEYS[9], 'opts.maxLenEvents')
    if cap and not string.match(cap, '^%d+$') then return 'cap' end
  end
  return 'go', tonumber(task[3]), room(KEYS[3], ARGV[3], task[4])
end
local ok, verdict, left, there = pcall(check)
if not ok then return 'error' end
if verdict ~= 'go' then return verdict end
if there < left then                                               -- selected jobs gone since the start
  redis.call('HINCRBY', KEYS[2], 'scanned', left - there)
  redis.call('HSET', KEYS[2], 'left', there)
  left = there
end
if left < tonumber(ARGV[2]) then return 'short' end
redis.call('SET', KEYS[5], redis.call('ZCARD', KEYS[3]))
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('RENAME', KEYS[3], KEYS[4]) end
return 'go'
"""

# After moveJobsToWait: the failed set back under its own name, then (if LEND lent it) what left it counted:
# moveJobsToWait only removes the jobs it moves. LEND lent it only with at least n selected jobs in it, the
# first n that moveJobsToWait takes, so fewer moved means it was refused (a write Redis refused, a key of the
# wrong type): what it did move is counted, the rest stays for the next batch.
# KEYS: batch, failed, lent, task. ARGV: n, now.
# Returns {state, jobs left}: state 3 not lent (nothing ran; left nil when the task hash has none), 4 refused,
# 1 nothing left or cancelling, 0 more.
SETTLE = GIVE_BACK + r"""
if redis.call('EXISTS', KEYS[1]) == 1 then give_back(KEYS[1], KEYS[2]) end
local before = tonumber(redis.call('GET', KEYS[3]))
local left = tonumber(redis.call('HGET', KEYS[4], 'left'))
if not before then return {3, left} end
redis.call('DEL', KEYS[3])
local moved = before - redis.call('ZCARD', KEYS[2])
local state = moved < tonumber(ARGV[1]) and 4 or 0
left = left - moved
redis.call('HINCRBY', KEYS[4], 'moved', moved)
redis.call('HINCRBY', KEYS[4], 'scanned', moved)
redis.call('HSET', KEYS[4], 'left', left, 'updated_at', ARGV[2])
if state == 0 and (left <= 0 or redis.call('HGET', KEYS[4], 'status') == 'cancelling') then state = 1 end
return {state, left}
"""

# A batch the previous version staged and BullMQ refused to move: its jobs are out of the failed set, in
# ``moving`` (scored by place), already counted. An unfinished task of that version moves it first, as that
# version did: STAGED, moveJobsToWait on ``batch`` (all of it, every score), UNSTAGE, in one MULTI/EXEC.
# STAGED: KEYS lease, moving, batch, wait, events, marker; ARGV token. Renames ``moving`` to ``batch`` when the
# lease is the caller's and BullMQ's keys are of the types moveJobsToWait writes (see LEND). Returns 'go',
# 'lease' or 'types'. UNSTAGE: KEYS batch, moving: what moveJobsToWait did not move (refused) staged again.
STAGED = TYPES + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lease' end
if not types_ok(KEYS[4], 'list', KEYS[5], 'stream', KEYS[6], 'zset') then return 'types' end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[3]) end
return 'go'
"""
UNSTAGE = "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[2]) end return 0"
