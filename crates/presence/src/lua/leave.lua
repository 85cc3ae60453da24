-- Removes one connection from a room for good (a tombstone keeps a refresh
-- from an older snapshot from bringing it back), atomically with its
-- user's count; the user's last connection leaves the roster and publishes
-- their leave. O(1) in the room's size.
--
-- KEYS: set, users, counts, roster, names, left (see join.lua).
-- ARGV: conn, now (ms), tombstone ttl (ms), the room's channel.
-- Returns 1 when it was the user's last connection, 0 when not (or absent),
-- -1 when the entry was removed but its user JSON was not ours.
redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[6], ARGV[3])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local json = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local id = json and user_id(json)
if not id then return -1 end
if redis.call('HINCRBY', KEYS[3], id, -1) > 0 then return 0 end
redis.call('HDEL', KEYS[3], id)
redis.call('ZREM', KEYS[4], id)
page_changed(KEYS[4], id, -1)
redis.call('HDEL', KEYS[5], id)
announce(ARGV[4], '-', KEYS[4], json)
return 1
