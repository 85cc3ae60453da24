-- One page of a room's users, in id order, after a cursor, with the room's
-- exact count (see page_of.lua).
--
-- KEYS: roster, names (see join.lua).
-- ARGV: the cursor ('' for the first page), limit.
-- Returns {count, '[json1,json2,...]'}.
return page_of(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
