-- Shared by the scripts that answer with a page of a room's users: up to
-- `limit` users in id order after `cursor` ('' for the first page), after
-- the room's exact count. Costs the page, not the room. The users come as
-- one JSON array (one reply value, not one per user: the node reads a
-- 100-user page in one parse).
--
-- The first page is kept beside the roster (`roster .. ':page'`, in the
-- room's hash tag, so in its slot): `limit`, a newline, the array. Every
-- change to the roster calls `page_changed`, which drops the kept page when
-- the user sorts into it, so a kept page is always what a fresh read would
-- give. While a big room fills, a newcomer rarely sorts into the first
-- page, and a join then reads one key instead of the page's users.
local function page_changed(roster, id)
  local kept = redis.call('GET', roster .. ':page')
  if not kept then return end
  local n = tonumber(string.match(kept, '^(%d+)\n'))
  -- The user's place in id order (before it was removed, or now it is in).
  if not n or redis.call('ZLEXCOUNT', roster, '-', '(' .. id) < n then
    redis.call('DEL', roster .. ':page')
  end
end

local function page_of(roster, names, cursor, limit)
  local count = redis.call('ZCARD', roster)
  local key = roster .. ':page'
  if cursor == '' then
    local kept = redis.call('GET', key)
    if kept then
      local at = string.find(kept, '\n', 1, true)
      if at and string.sub(kept, 1, at - 1) == tostring(limit) then
        return {count, string.sub(kept, at + 1)}
      end
    end
  end
  local min = '-'
  if cursor ~= '' then min = '(' .. cursor end
  local ids = redis.call('ZRANGEBYLEX', roster, min, '+', 'LIMIT', 0, limit)
  local page = '[]'
  if #ids > 0 then
    local jsons = redis.call('HMGET', names, unpack(ids))
    local found = {}
    for i = 1, #ids do
      if jsons[i] then found[#found + 1] = jsons[i] end
    end
    page = '[' .. table.concat(found, ',') .. ']'
  end
  if cursor == '' then
    -- Kept no longer than the roster lives.
    local ttl = redis.call('PTTL', roster)
    if ttl > 0 then redis.call('SET', key, tostring(limit) .. '\n' .. page, 'PX', ttl) end
  end
  return {count, page}
end
