-- regis verify, looking for keys only another region holds: one SCAN step, without
-- Regis's own metadata keys, whose names would otherwise cross the network only to be
-- dropped (with lww metadata they are half of the keys).
--
-- ARGV: cursor, MATCH pattern, COUNT hint, prefix of the keys to skip.
--
-- Returns {next cursor, keys SCAN returned (skipped ones included), names}: names is one
-- string, per kept key struct.pack('<I4', its length) and the name.

local scan = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local keys = scan[2]
local skip = ARGV[4]
local skipped = #skip
local sub, pack = string.sub, struct.pack
local out, n = {}, 0
for i = 1, #keys do
  local k = keys[i]
  if sub(k, 1, skipped) ~= skip then
    out[n + 1] = pack('<I4', #k)
    out[n + 2] = k
    n = n + 2
  end
end
return {scan[1], #keys, table.concat(out)}
