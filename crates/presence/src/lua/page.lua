-- One page of a room's users, in id order, after a cursor, with the room's
-- exact count. Costs the page, not the room.
--
-- KEYS: roster, names (see join.lua).
-- ARGV: the cursor ('' for the first page), limit.
-- Returns {count, json1, json2, ...}.
local min = '-'
if ARGV[1] ~= '' then min = '(' .. ARGV[1] end
local ids = redis.call('ZRANGEBYLEX', KEYS[1], min, '+', 'LIMIT', 0, ARGV[2])
local out = {redis.call('ZCARD', KEYS[1])}
if #ids > 0 then
  local jsons = redis.call('HMGET', KEYS[2], unpack(ids))
  for i = 1, #ids do
    if jsons[i] then out[#out + 1] = jsons[i] end
  end
end
return out
