-- Stores one direct message in its dialog's stream.
--
-- KEYS[1]  the dialog's stream
-- KEYS[2]  the dialog's epoch (made here when missing, as a room's is)
-- KEYS[3]  the dialog's meta hash: `name:{id}` (each user's last display
--          name, as JSON) and `read:{id}` (how far each has read)
-- ARGV[1]  trim strategy ('~')
-- ARGV[2]  maxlen
-- ARGV[3]  the record to store (JSON: from, to, text, ts)
-- ARGV[4]  the sender's id (kept beside the record, so unread counts
--          need no JSON decoding)
-- ARGV[5]  the sender as JSON ({id, name})
-- ARGV[6]  a fresh epoch, used if the dialog has none
-- ARGV[7]  the dialog's expiry in ms after this message
--
-- Returns {epoch, stream id}.
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[2], epoch)
end
local sid = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[2], '*', 'm', ARGV[3], 'f', ARGV[4])
redis.call('HSET', KEYS[3], 'name:' .. ARGV[4], ARGV[5])
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ARGV[7])
end
return {epoch, sid}
