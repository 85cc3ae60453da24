-- Shared by the scripts that answer with a page of a room's users: up to
-- `limit` users in id order after `cursor` ('' for the first page), after
-- the room's exact count. Costs the page, not the room. The users come as
-- one JSON array (one reply value, not one per user: the node reads a
-- 100-user page in one parse).
local function page_of(roster, names, cursor, limit)
  local min = '-'
  if cursor ~= '' then min = '(' .. cursor end
  local ids = redis.call('ZRANGEBYLEX', roster, min, '+', 'LIMIT', 0, limit)
  local count = redis.call('ZCARD', roster)
  if #ids == 0 then return {count, '[]'} end
  local jsons = redis.call('HMGET', names, unpack(ids))
  local found = {}
  for i = 1, #ids do
    if jsons[i] then found[#found + 1] = jsons[i] end
  end
  return {count, '[' .. table.concat(found, ',') .. ']'}
end
