-- Shared by the scripts that answer with a page of a room's users: up to
-- `limit` users in id order after `cursor` ('' for the first page), after
-- the room's exact count. Costs the page, not the room. The users come as
-- one JSON array (one reply value, not one per user: the node reads a
-- 100-user page in one parse).
--
-- The first page is kept beside the roster (`roster .. ':page'`, in the
-- room's hash tag, so in its slot), a hash of the page's `limit`, the
-- roster's `size` when it was read or last changed, and the `page` itself.
-- Every change to the roster calls `page_changed`, which drops the kept
-- page when the user sorts into it, so a kept page is what a fresh read
-- would give. A change made by anything that does not call it (an older
-- node during a rolling upgrade) shows in the roster's size, and the kept
-- page is then not used. While a big room fills, a newcomer rarely sorts
-- into the first page, and a join then reads one key instead of the page's
-- users.

-- After `id` joined (`delta` 1) or left (-1) the roster.
local function page_changed(roster, id, delta)
  local key = roster .. ':page'
  local kept = redis.call('HMGET', key, 'limit', 'size')
  if not kept[1] then return end
  local now = redis.call('ZCARD', roster)
  -- The user's place in id order (before it was removed, or now it is in).
  local place = redis.call('ZLEXCOUNT', roster, '-', '(' .. id)
  if tonumber(kept[2]) ~= now - delta or place < tonumber(kept[1]) then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'size', now)
  end
end

local function page_of(roster, names, cursor, limit)
  local count = redis.call('ZCARD', roster)
  local key = roster .. ':page'
  if cursor == '' then
    local kept = redis.call('HMGET', key, 'limit', 'size', 'page')
    if kept[1] == tostring(limit) and tonumber(kept[2]) == count and kept[3] then
      return {count, kept[3]}
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
    if ttl > 0 then
      redis.call('HSET', key, 'limit', limit, 'size', count, 'page', page)
      redis.call('PEXPIRE', key, ttl)
    end
  end
  return {count, page}
end
