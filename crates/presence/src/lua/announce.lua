-- Shared by the scripts that change who is in a room: publishes one change
-- on the room's channel, in the room's order: '!' (the bus's mark of a
-- presence change), '+' for a user's first connection or '-' for their
-- last, the room's user count after it, a newline, the user's JSON
-- (decoded by `change.rs`). PUBLISH is set before this file: 'PUBLISH', or
-- 'SPUBLISH' on Redis Cluster.
local function announce(channel, sign, roster, json)
  redis.call(PUBLISH, channel, '!' .. sign .. redis.call('ZCARD', roster) .. '\n' .. json)
end
