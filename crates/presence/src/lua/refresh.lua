-- Keeps one node's connections in a room alive, puts back those swept while
-- the node was stalled (with their users' joins), then sweeps the room's
-- expired entries (left by crashed nodes), publishing each departed user's
-- leave. One script, so two nodes sweeping one room never both remove an
-- entry, and a connection that left (tombstoned) is never brought back.
--
-- KEYS: set, users, counts, roster, names, left (see join.lua).
-- ARGV: now, expiry, key ttl, the room's channel, then per connection:
--       conn, user JSON, user id.
-- Returns {corrupt entries removed, connections put back, users departed}.
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', ARGV[1] - ARGV[3] / 2)
local restored, departed, corrupt = 0, 0, 0
for i = 5, #ARGV, 3 do
  local conn, json, id = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if not redis.call('ZSCORE', KEYS[6], conn) then
    if redis.call('ZADD', KEYS[1], ARGV[2], conn) == 1 then
      restored = restored + 1
      redis.call('HSET', KEYS[2], conn, json)
      if redis.call('HINCRBY', KEYS[3], id, 1) == 1 then
        redis.call('ZADD', KEYS[4], 0, id)
        page_changed(KEYS[4], id, 1)
        redis.call('HSET', KEYS[5], id, json)
        announce(ARGV[4], '+', KEYS[4], json)
      end
    end
  end
end
for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
for _, conn in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
  redis.call('ZREM', KEYS[1], conn)
  local json = redis.call('HGET', KEYS[2], conn)
  redis.call('HDEL', KEYS[2], conn)
  local id = json and user_id(json)
  if not id then
    corrupt = corrupt + 1
  elseif redis.call('HINCRBY', KEYS[3], id, -1) <= 0 then
    redis.call('HDEL', KEYS[3], id)
    redis.call('ZREM', KEYS[4], id)
    page_changed(KEYS[4], id, -1)
    redis.call('HDEL', KEYS[5], id)
    departed = departed + 1
    announce(ARGV[4], '-', KEYS[4], json)
  end
end
return {corrupt, restored, departed}
