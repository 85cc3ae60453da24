-- Stores one chat message in its room's stream and publishes it, as one
-- atomic step: the stream order is the live order, and the id the sender's
-- ack carries is the stream position, in the history's epoch.
--
-- KEYS[1]  the room's stream
-- KEYS[2]  the room's epoch (a string; made here when missing, so a history
--          that was lost, and with it its epoch, starts a new one)
-- ARGV[1]  trim strategy: '~' (approximate, cheap) or '=' (exact, for size 0)
-- ARGV[2]  maxlen
-- ARGV[3]  the record to store (JSON: from, text, ts)
-- ARGV[4]  the room's channel
-- ARGV[5]  the `message` frame's JSON up to its id
-- ARGV[6]  the frame's JSON after its id
-- ARGV[7]  a fresh epoch, used if the room has none
-- ARGV[8]  the history's expiry in ms after this message (0: never)
-- ARGV[9]  the publish command: PUBLISH, or SPUBLISH on Redis Cluster (the
--          channel hashes to the stream's slot there)
--
-- The id is `epoch:stream-id`. What is published is '@' .. id .. '\n' ..
-- frame: a header with the position, which the subscriber strips (see
-- `redis/framing.rs`), then the frame with the id spliced in.
-- Returns {epoch, stream id}.
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[7]
  redis.call('SET', KEYS[2], epoch)
end
local sid = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[2], '*', 'm', ARGV[3])
local id = epoch .. ':' .. sid
redis.call(ARGV[9], ARGV[4], '@' .. id .. '\n' .. ARGV[5] .. id .. ARGV[6])
if tonumber(ARGV[8]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
end
return {epoch, sid}
