-- Removes one connection from a room, atomically with its user's count, so
-- a user leaves once, with their last connection.
--
-- KEYS: the room's set, users hash, counts hash. ARGV: conn.
-- Returns 1 when it was the user's last entry, 0 when not (or absent),
-- -1 when the entry was removed but its user JSON was not ours.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local json = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local id = json and user_id(json)
if not id then return -1 end
if redis.call('HINCRBY', KEYS[3], id, -1) > 0 then return 0 end
redis.call('HDEL', KEYS[3], id)
return 1
