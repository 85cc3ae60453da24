-- Records one connection in a room, atomically with its user's count, so a
-- user with several connections joins once.
--
-- KEYS: the room's set, users hash, counts hash.
-- ARGV: conn, expiry (ms since epoch), user JSON, user id, key ttl (ms).
-- Returns 1 when this is the user's first entry in the room (announce a join).
local first = 0
if redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  if redis.call('HINCRBY', KEYS[3], ARGV[4], 1) == 1 then first = 1 end
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
return first
