-- Shared by the scripts that answer with a page of a room's users: up to
-- `limit` users in id order after `cursor` ('' for the first page), after
-- the room's exact count. Costs the page, not the room.
local function page_of(roster, names, cursor, limit)
  local min = '-'
  if cursor ~= '' then min = '(' .. cursor end
  local ids = redis.call('ZRANGEBYLEX', roster, min, '+', 'LIMIT', 0, limit)
  local out = {redis.call('ZCARD', roster)}
  if #ids > 0 then
    local jsons = redis.call('HMGET', names, unpack(ids))
    for i = 1, #ids do
      if jsons[i] then out[#out + 1] = jsons[i] end
    end
  end
  return out
end
