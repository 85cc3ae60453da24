-- Reads a range of a room's stream and, atomically with it, the oldest
-- position still kept. (Redis 7.0 does not advance `max-deleted-entry-id`
-- when MAXLEN trims, so the oldest kept entry is what tells whether anything
-- after an id is gone.)
--
-- KEYS[1]  the room's stream
-- ARGV[1]  mode: 'after', 'before' or 'latest'
-- ARGV[2]  the id to read after or before ('+' for latest)
-- ARGV[3]  count
--
-- Returns {oldest id or 'missing', id1, record1, id2, record2, ...}, newest
-- first for 'before' and 'latest'.
local entries
if ARGV[1] == 'after' then
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[2], '+', 'COUNT', ARGV[3])
elseif ARGV[1] == 'before' then
  entries = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[2], '-', 'COUNT', ARGV[3])
else
  entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[3])
end
local first = 'missing'
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #oldest > 0 then first = oldest[1][1] end
local out = {first}
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
