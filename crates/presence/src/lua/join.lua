-- Records one connection in a room, atomically with its user's count; the
-- user's first connection adds them to the roster and publishes their join.
-- Then answers with the room's first page (see page_of.lua), so a join is
-- one round trip.
--
-- KEYS: the room's set (conn -> expiry), users (conn -> user JSON), counts
--       (user id -> conns), roster (user ids), names (user id -> JSON),
--       left (conn -> when it left).
-- ARGV: conn, expiry (ms since epoch), user JSON, user id, key ttl (ms),
--       the room's channel, the page's size.
-- Returns {count, '[json1,json2,...]'}.
redis.call('ZREM', KEYS[6], ARGV[1])
if redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  if redis.call('HINCRBY', KEYS[3], ARGV[4], 1) == 1 then
    redis.call('ZADD', KEYS[4], 0, ARGV[4])
    page_changed(KEYS[4], ARGV[4], 1)
    redis.call('HSET', KEYS[5], ARGV[4], ARGV[3])
    announce(ARGV[6], '+', KEYS[4], ARGV[3])
  end
end
for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
return page_of(KEYS[4], KEYS[5], '', ARGV[7])
