-- Moves how far a user has read a dialog, never back.
--
-- KEYS[1]  the dialog's stream
-- KEYS[2]  its epoch
-- KEYS[3]  its meta hash (see dm_store.lua)
-- ARGV[1]  the reader's id
-- ARGV[2]  the reader as JSON ({id, name})
-- ARGV[3]  the epoch of the id read
-- ARGV[4]  the stream id read ({ms}-{seq})
--
-- Returns {} when the id is not a position of the dialog's current history
-- (another epoch, or newer than its newest message); else {moved (0 or 1),
-- the position now stored as epoch:id}.
local epoch = redis.call('GET', KEYS[2])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if not epoch or epoch ~= ARGV[3] or #last == 0 then
  return {}
end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
if before(last[1][1], ARGV[4]) then
  return {}
end
local key = 'read:' .. ARGV[1]
local now = nil
local stored = redis.call('HGET', KEYS[3], key)
if stored then
  local e, sid = string.match(stored, '^([^:]+):(.+)$')
  if e == epoch then
    now = sid
  end
end
local moved = 0
if now == nil or before(now, ARGV[4]) then
  now = ARGV[4]
  moved = 1
  redis.call('HSET', KEYS[3], key, epoch .. ':' .. now)
end
redis.call('HSET', KEYS[3], 'name:' .. ARGV[1], ARGV[2])
return {moved, epoch .. ':' .. now}
