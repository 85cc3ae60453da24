-- Sets one node's count of sockets subscribed to a topic and answers the
-- topic's count over every node whose entry has not expired (sweeping the
-- expired ones: a crashed node's sockets stop counting within the ttl).
-- When that total differs from the one last published, publishes it on the
-- topic's channel ('!' the bus's mark of a presence-store change, '=' a
-- subscription count), in the topic's order.
--
-- KEYS: the topic's tally hash (node -> "count:expiry ms"; '=' -> the total
--       last published).
-- ARGV: node, count (0 removes the node), expiry, now (ms since epoch),
--       key ttl (ms), the topic's channel.
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local all = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[4])
local total, last = 0, false
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  if field == '=' then
    last = value
  else
    local sep = string.find(value, ':', 1, true)
    local n = sep and tonumber(string.sub(value, 1, sep - 1))
    local expiry = sep and tonumber(string.sub(value, sep + 1))
    if not n or not expiry or expiry < now then
      redis.call('HDEL', KEYS[1], field)
    else
      total = total + n
    end
  end
end
if tostring(total) ~= last then
  redis.call(PUBLISH, ARGV[6], '!=' .. total)
end
if total == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], '=', total)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return total
