-- regis verify, the reference region: one SCAN step and, for each key it returns, its type,
-- expiry and a fingerprint of its DUMP payload, so a chunk of keys costs one round trip and
-- one string to parse instead of a SCAN plus two RESP values per key.
--
-- ARGV: cursor, MATCH pattern, COUNT hint, expiry command (PEXPIRETIME, or PTTL before
-- Redis 7), prefix of the keys to skip (Regis's own metadata), longest payload sent as is.
--
-- Returns {next cursor, keys SCAN returned (skipped ones included), records}: records is
-- one string, per kept key the header struct.pack('<I4BBi8I4', name length, RDB type byte,
-- fingerprint kind, expiry, fingerprint length), then the name, then the fingerprint. A key
-- that expired under the SCAN has type byte 255 and an empty fingerprint. The fingerprint
-- is the payload itself (kind 0) when it is short, else its sha1 (kind 1): hashing a short
-- payload costs Redis more than sending it, while a long one is better hashed than held in
-- memory and sent. Both regions choose by the payload's length, so equal payloads give
-- equal fingerprints. Binary headers, because formatting numbers as text (tostring,
-- string.format) costs more here than all the rest of the record.

local scan = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local keys = scan[2]
local ttl, skip, raw = ARGV[4], ARGV[5], tonumber(ARGV[6])
local skipped = #skip
local call, sub, byte, pack, sha = redis.call, string.sub, string.byte, struct.pack, redis.sha1hex
local out, n = {}, 0
for i = 1, #keys do
  local k = keys[i]
  if sub(k, 1, skipped) ~= skip then
    local d = call('DUMP', k)
    if d then
      local f, hashed = d, 0
      if #d > raw then f, hashed = sha(d), 1 end
      out[n + 1] = pack('<I4BBi8I4', #k, byte(d, 1), hashed, call(ttl, k), #f)
      out[n + 2] = k
      out[n + 3] = f
      n = n + 3
    else
      out[n + 1] = pack('<I4BBi8I4', #k, 255, 0, -2, 0)
      out[n + 2] = k
      n = n + 2
    end
  end
end
return {scan[1], #keys, table.concat(out)}
