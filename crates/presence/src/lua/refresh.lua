-- Keeps one node's entries of a room alive and sweeps the room's expired
-- entries (left by crashed nodes). One script, so two nodes sweeping one
-- room never both remove an entry, and each departure is announced once.
--
-- KEYS: the room's set, users hash, counts hash.
-- ARGV: now, expiry, key ttl, conn...
-- Pushes the given conns' expiry (XX: an entry another node already swept
-- stays gone, its leave was announced), then sweeps the room. Returns
-- {corrupt entries removed, {user JSON of each user whose last entry went}}.
for i = 4, #ARGV do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i]) end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
local gone, seen, corrupt = {}, {}, 0
for _, conn in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
  redis.call('ZREM', KEYS[1], conn)
  local json = redis.call('HGET', KEYS[2], conn)
  redis.call('HDEL', KEYS[2], conn)
  local id = json and user_id(json)
  if not id then
    corrupt = corrupt + 1
  elseif redis.call('HINCRBY', KEYS[3], id, -1) <= 0 then
    redis.call('HDEL', KEYS[3], id)
    if not seen[id] then
      seen[id] = true
      gone[#gone + 1] = json
    end
  end
end
return {corrupt, gone}
