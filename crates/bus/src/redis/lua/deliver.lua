-- Keeps one frame in a user's mailbox and publishes it on the user's
-- channel, as one atomic step: the mailbox order is the live order, so gap
-- repair reads what a node missed from the mailbox exactly as it reads a
-- room's history.
--
-- KEYS[1]  the user's mailbox stream
-- KEYS[2]  its epoch
-- ARGV[1]  maxlen (approximate)
-- ARGV[2]  the frame's JSON
-- ARGV[3]  the user's channel
-- ARGV[4]  a fresh epoch, used if the mailbox has none
-- ARGV[5]  the mailbox's expiry in ms
-- ARGV[6]  the publish command: PUBLISH, or SPUBLISH on Redis Cluster
--
-- What is published is '@' .. epoch .. ':' .. id .. '\n' .. frame (see
-- `redis/framing.rs`). Returns how many subscribers got it.
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[2], epoch)
end
local sid = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[2])
local n = redis.call(ARGV[6], ARGV[3], '@' .. epoch .. ':' .. sid .. '\n' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return n
