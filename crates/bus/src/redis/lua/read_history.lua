-- Reads a range of a room's stream and, atomically with it, what tells
-- whether the range is whole: the history's epoch, the oldest and newest
-- positions still kept, and its length. (Redis 7.0 does not advance
-- `max-deleted-entry-id` when MAXLEN trims, so the oldest kept entry is what
-- tells whether anything after an id is gone.)
--
-- KEYS[1]  the room's stream
-- KEYS[2]  the room's epoch
-- ARGV[1]  mode: 'after', 'before' or 'latest'
-- ARGV[2]  the stream id to read after or before (ignored for 'latest')
-- ARGV[3]  count (0 reads no entries, only the rest)
--
-- Returns {epoch or '', oldest or '', newest or '', length, id1, record1,
-- id2, record2, ...}, newest first for 'before' and 'latest'.
local entries = {}
local count = tonumber(ARGV[3])
if count > 0 then
  if ARGV[1] == 'after' then
    entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[2], '+', 'COUNT', count)
  elseif ARGV[1] == 'before' then
    entries = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[2], '-', 'COUNT', count)
  else
    entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', count)
  end
end
local epoch = redis.call('GET', KEYS[2]) or ''
local oldest, newest = '', ''
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first > 0 then oldest = first[1][1] end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then newest = last[1][1] end
local out = {epoch, oldest, newest, redis.call('XLEN', KEYS[1])}
for _, e in ipairs(entries) do
  local fields = e[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'm' then
      out[#out + 1] = e[1]
      out[#out + 1] = fields[i + 1]
    end
  end
end
return out
