-- Shared by the scripts that read stored users: the user id out of a stored
-- user JSON, or nil when the entry is not one this code wrote.
local function user_id(json)
  local ok, u = pcall(cjson.decode, json)
  if ok and type(u) == 'table' and type(u.id) == 'string' then return u.id end
  return nil
end
