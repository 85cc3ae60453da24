-- Starts a new epoch for a room whose history lost entries that a node had
-- already delivered (a failover to a replica that lacked them): ids from
-- before can then no longer pass for complete positions. Only if the epoch
-- is still the one the caller saw, so two nodes that notice at once bump it
-- once.
--
-- KEYS[1]  the room's epoch
-- ARGV[1]  the epoch the caller saw
-- ARGV[2]  the new epoch
-- Returns the epoch now in force.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
end
return redis.call('GET', KEYS[1])
