-- Everyone with a live (unexpired) entry in a room.
--
-- KEYS: the room's set, users hash. ARGV: now (ms since epoch).
-- Returns the user JSON of every live conn. HMGET goes in chunks: Redis's
-- Lua cannot `unpack` more than ~8000 values.
local conns = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
local out = {}
for i = 1, #conns, 500 do
  local chunk = {}
  for k = i, math.min(i + 499, #conns) do chunk[#chunk + 1] = conns[k] end
  local jsons = redis.call('HMGET', KEYS[2], unpack(chunk))
  for k = 1, #chunk do
    if jsons[k] then out[#out + 1] = jsons[k] end
  end
end
return out
