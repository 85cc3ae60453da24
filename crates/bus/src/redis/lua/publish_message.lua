-- Stores one chat message in its room's stream and publishes it, as one
-- atomic step: the stream order is the live order, and the id the sender's
-- ack carries is the stream position.
--
-- KEYS[1]  the room's stream
-- ARGV[1]  trim strategy: '~' (approximate, cheap) or '=' (exact, for size 0)
-- ARGV[2]  maxlen
-- ARGV[3]  the record to store (JSON: from, text, ts)
-- ARGV[4]  the room's channel
-- ARGV[5]  the `message` frame's JSON up to its id
-- ARGV[6]  the frame's JSON after its id
--
-- What is published is '@' .. id .. '\n' .. frame: a header with the
-- position, which the subscriber strips (see `redis/framing.rs`), then the
-- frame with the id spliced in. Returns {id, receivers}.
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[2], '*', 'm', ARGV[3])
local n = redis.call('PUBLISH', ARGV[4], '@' .. id .. '\n' .. ARGV[5] .. id .. ARGV[6])
return {id, n}
