-- Regis lww fast path: plain SETs (no TTL option) on keys whose state is a bare floor version,
-- the common case, in two calls for the whole batch instead of the general script's work.
-- KEYS: K1, M1, K2, M2, ... (distinct data keys and their state strings, as in lww.lua)
-- ARGV: version1, value1, version2, value2, ...
-- Returns one entry per key: 0 when applied or superseded, 1 when its state holds more than
-- a floor (a TTL, members, counters, an expiry) and the general script must apply it.
local n = #KEYS / 2
local states = {}
local j = 1
while j <= n do
  local last = math.min(n, j + 999)
  local names = {}
  for i = j, last do names[#names + 1] = KEYS[2 * i] end
  local got = redis.call('MGET', unpack(names))
  for k = 1, #got do states[j + k - 1] = got[k] end
  j = last + 1
end
local results = {}
local writes = {}
local function flush()
  if #writes > 0 then
    redis.call('MSET', unpack(writes))
    writes = {}
  end
end
for i = 1, n do
  local v = ARGV[2 * i - 1]
  local s = states[i]
  if s and #s ~= 19 then
    results[i] = 1
  else
    -- MSET also clears any TTL on the key and on its state: a plain SET leaves none.
    if not s or v > s then
      writes[#writes + 1] = KEYS[2 * i - 1]
      writes[#writes + 1] = ARGV[2 * i]
      writes[#writes + 1] = KEYS[2 * i]
      writes[#writes + 1] = v
      if #writes >= 4000 then flush() end
    end
    results[i] = 0
  end
end
flush()
return results
