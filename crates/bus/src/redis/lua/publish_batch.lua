-- Stores and publishes several chat messages, each as `publish_message.lua`
-- does one, in the order given: one script call for every message a node
-- had waiting (on one Redis; see `redis/publisher.rs`). Each message is its
-- own step: one that fails (a room key of the wrong type) is answered with
-- its error and leaves the others alone.
--
-- For message i (from 1):
-- KEYS[2i-1]  the room's stream
-- KEYS[2i]    the room's epoch
-- ARGV[1]     trim strategy: '~' or '=' (see publish_message.lua)
-- ARGV[2]     maxlen
-- ARGV[3]     the history's expiry in ms after a message (0: never)
-- ARGV[4]     the publish command (PUBLISH)
-- then five arguments per message, from ARGV[5]: the record to store, the
-- room's channel, the frame's JSON up to its id, the JSON after it, and a
-- fresh epoch used if the room has none.
--
-- Returns one {epoch, stream id} per message, or {'', error} for one that
-- failed.
local ttl = tonumber(ARGV[3])

local function one(i)
  local stream, epoch_key, a = KEYS[2 * i - 1], KEYS[2 * i], 4 + 5 * (i - 1)
  local epoch = redis.call('GET', epoch_key)
  if not epoch then
    epoch = ARGV[a + 5]
    redis.call('SET', epoch_key, epoch)
  end
  local sid = redis.call('XADD', stream, 'MAXLEN', ARGV[1], ARGV[2], '*', 'm', ARGV[a + 1])
  local id = epoch .. ':' .. sid
  redis.call(ARGV[4], ARGV[a + 2], '@' .. id .. '\n' .. ARGV[a + 3] .. id .. ARGV[a + 4])
  if ttl > 0 then
    redis.call('PEXPIRE', stream, ARGV[3])
    redis.call('PEXPIRE', epoch_key, ARGV[3])
  end
  return {epoch, sid}
end

local out = {}
for i = 1, #KEYS / 2 do
  local ok, result = pcall(one, i)
  if ok then
    out[i] = result
  else
    local reason = type(result) == 'table' and result.err or tostring(result)
    out[i] = {'', reason}
  end
end
return out
