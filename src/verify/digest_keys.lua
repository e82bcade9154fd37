-- regis verify, every other region: the type, expiry and DUMP fingerprint of each named
-- key, in the order of KEYS, as one string: the records of scan_digests.lua (which
-- describes them) without the names, so the header is struct.pack('<BBi8I4', RDB type
-- byte, fingerprint kind, expiry, fingerprint length); a missing key has type byte 255.
--
-- KEYS: the keys. ARGV: expiry command (PEXPIRETIME, or PTTL before Redis 7), longest
-- payload sent as is.

local ttl, raw = ARGV[1], tonumber(ARGV[2])
local call, byte, pack, sha = redis.call, string.byte, struct.pack, redis.sha1hex
local out, n = {}, 0
for i = 1, #KEYS do
  local k = KEYS[i]
  local d = call('DUMP', k)
  if d then
    local f, hashed = d, 0
    if #d > raw then f, hashed = sha(d), 1 end
    out[n + 1] = pack('<BBi8I4', byte(d, 1), hashed, call(ttl, k), #f)
    out[n + 2] = f
    n = n + 2
  else
    out[n + 1] = pack('<BBi8I4', 255, 0, -2, 0)
    n = n + 1
  end
end
return table.concat(out)
