-- One dialog as a user's list shows it: its newest message, how many
-- messages from the other user come after what this user has read, and the
-- other user's last display name.
--
-- KEYS[1]  the dialog's stream
-- KEYS[2]  its epoch
-- KEYS[3]  its meta hash (see dm_store.lua)
-- ARGV[1]  this user's id
-- ARGV[2]  the other user's id
--
-- Returns {epoch or '', newest id or '', newest record or '', unread,
-- the other user as JSON or ''}.
local epoch = redis.call('GET', KEYS[2])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if not epoch or #last == 0 then
  return {'', '', '', 0, ''}
end
local from = '-'
local read = redis.call('HGET', KEYS[3], 'read:' .. ARGV[1])
if read then
  local e, sid = string.match(read, '^([^:]+):(.+)$')
  if e == epoch then
    from = '(' .. sid
  end
end
local unread = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], from, '+')) do
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 'f' and f[i + 1] == ARGV[2] then
      unread = unread + 1
    end
  end
end
local record = ''
local fields = last[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 'm' then
    record = fields[i + 1]
  end
end
local other = redis.call('HGET', KEYS[3], 'name:' .. ARGV[2]) or ''
return {epoch, last[1][1], record, unread, other}
