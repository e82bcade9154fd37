-- Regis last-writer-wins applier. One call applies a batch of messages to one database.
--
-- KEYS: two per data key, in the order the batch first names them:
--   KEYS[2i-1] the data key K
--   KEYS[2i]   its state string M   (__regis:m:{...})
-- In the same cluster slot, derived from M's name:
--   H = __regis:h:{...}  hash: member -> version of its last write or removal
--   R = __regis:c:{...}  sorted set of counter records "<version>|<kind><delta>|<field>"
--                        (all scores 0; kind i=INCRBY f=INCRBYFLOAT h=HINCRBY g=HINCRBYFLOAT
--                        z=ZINCRBY)
-- ARGV: tombstone ttl (ms), cutoff version (now - tombstone ttl: the horizon), message count,
-- then per message its op count and ops; an op is: code, key index i, version, operand count,
-- operands (lww.rs).
--
-- Versions are 19-digit zero-padded strings: string order is version order.
-- M holds the key's state: just f when nothing else is set, else "f,t,d,e,x,c,g[,p[,n]]":
--   f floor: last whole-key write or delete      t TTL register version
--   d deadline ms (0 = none)                     e the version just after d's millisecond
--   x M's own expiry ms (0 = none)               c '1' when R exists
--   g the newest member register (ZERO = no H)
--   p prune floor: the newest register pruned from H ('0' or absent = ZERO: none, or not
--     above f); a member without a register in H counts as having register p
--   n dead registers (of absent members) the last prune kept because they were too recent;
--     the next prune waits until H has grown past them (0 = none, or no H)
-- States written before p and n existed (7 fields, or a bare f) read as p = ZERO, n = 0; a
-- state with g = ZERO always has p <= f and n = 0, so the bare-floor form (the only one the
-- fast path, lww_fast.lua, handles) never hides a prune floor.
--
-- Returns one entry per message: 0 when applied (or superseded), else the error text.

local ZERO = '0000000000000000000'
local TOMB = tonumber(ARGV[1])
local CUTOFF = ARGV[2]
local clock = redis.call('TIME')
local NOW = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function vmax(a, b)
  if a > b then return a end
  return b
end

local function num(n) return string.format('%.0f', n) end

-- redis.call that raises a catchable error instead of aborting the script.
local function call(...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then error(r.err, 0) end
  return r
end

-- Calls `cmd head... items...` in chunks, so huge member lists stay within Lua's stack.
local function chunked(cmd, head, items)
  local n = #items
  local i = 1
  while i <= n do
    local args = {}
    for _, h in ipairs(head) do args[#args + 1] = h end
    local last = math.min(n, i + 999)
    for j = i, last do args[#args + 1] = items[j] end
    call(cmd, unpack(args))
    i = last + 1
  end
end

local function K(i) return KEYS[2 * i - 1] end
local function M(i) return KEYS[2 * i] end
local function H(i) return '__regis:h:' .. string.sub(KEYS[2 * i], 11) end
local function R(i) return '__regis:c:' .. string.sub(KEYS[2 * i], 11) end

-- State of every key, read with one MGET; authoritative for the rest of the call.
local states = {}
do
  local names = {}
  for i = 1, #KEYS / 2 do names[i] = M(i) end
  local j = 1
  while j <= #names do
    local last = math.min(#names, j + 999)
    local raw = redis.call('MGET', unpack(names, j, last))
    for k = 1, #raw do
      local s = { f = ZERO, t = ZERO, d = 0, e = ZERO, x = 0, c = false, g = ZERO, p = ZERO, n = 0 }
      local v = raw[k]
      if v then
        if #v == 19 then
          s.f = v
          s.t = v
        else
          local p = {}
          for part in string.gmatch(v, '[^,]+') do p[#p + 1] = part end
          s.f, s.t, s.d, s.e, s.x, s.c, s.g = p[1], p[2], tonumber(p[3]), p[4], tonumber(p[5]), p[6] == '1', p[7]
          -- A state with n but no prune floor writes p as '0'.
          if p[8] and #p[8] == 19 then s.p = p[8] end
          s.n = tonumber(p[9] or '0')
        end
      end
      states[j + k - 1] = s
    end
    j = last + 1
  end
end

local function pack(s)
  -- Every op that compares member registers is newer than f, so a prune floor at or below f
  -- no longer refuses anything; without H there is nothing to prune.
  local p = ZERO
  if s.p > s.f then p = s.p end
  local n = 0
  if s.g ~= ZERO then n = s.n end
  if s.t == s.f and s.d == 0 and s.x == 0 and not s.c and s.g == ZERO and p == ZERO then return s.f end
  local parts = { s.f, s.t, num(s.d), s.e, num(s.x), s.c and '1' or '0', s.g }
  if p ~= ZERO then parts[8] = p elseif n > 0 then parts[8] = '0' end
  if n > 0 then parts[9] = num(n) end
  return table.concat(parts, ',')
end

-- Writes wait here and go out together: plain SETs and state updates in one MSET.
local pending_data = {}   -- K index -> value, for SETs that need nothing but the value
local dirty = {}          -- K index -> true when its state changed
local any_pending = false

local function flush()
  if not any_pending then return end
  local pairs_ = {}
  for i, value in pairs(pending_data) do
    pairs_[#pairs_ + 1] = K(i)
    pairs_[#pairs_ + 1] = value
  end
  for i in pairs(dirty) do
    local s = states[i]
    if s.x == 0 then
      pairs_[#pairs_ + 1] = M(i)
      pairs_[#pairs_ + 1] = pack(s)
    else
      call('SET', M(i), pack(s), 'PXAT', num(s.x))
    end
  end
  chunked('MSET', {}, pairs_)
  pending_data = {}
  dirty = {}
  any_pending = false
end

-- Makes key i's deferred SET visible before the script reads or writes the key directly.
-- Only that key: every op touches its own key alone, and the states stay in `states` (the
-- authority for the rest of the call) until the final flush, so one key's direct access
-- costs no MSET of the whole batch's deferred writes.
local function flush_key(i)
  local value = pending_data[i]
  if value ~= nil then
    pending_data[i] = nil
    call('SET', K(i), value)
  end
end

local function save(i)
  dirty[i] = true
  any_pending = true
end

-- Keeps M (and H, R) alive exactly as long as needed: forever while the key lives without a
-- TTL, until deadline + tombstone ttl with one, tombstone ttl after it is gone.
local function meta_expiry(i, s, exists)
  local want
  if exists then
    if s.d > 0 then want = s.d + TOMB else want = 0 end
  else
    if s.d > 0 then want = s.d + TOMB
    elseif s.x > 0 then want = s.x
    else want = NOW + TOMB end
  end
  if want == s.x then return end
  s.x = want
  save(i)
  for _, present in ipairs({ { s.g ~= ZERO, H(i) }, { s.c, R(i) } }) do
    if present[1] then
      if want == 0 then call('PERSIST', present[2]) else call('PEXPIREAT', present[2], num(want)) end
    end
  end
end

local function exists(i)
  flush_key(i)
  return redis.call('EXISTS', K(i)) == 1
end

-- A member's register; one pruned (or never written) counts as the prune floor.
local function register_of(i, s, member)
  return redis.call('HGET', H(i), member) or s.p
end

-- Counter records newer than `from`, in version order, that `wanted(kind, field, version)`
-- selects, re-applied on top of the current value.
local function replay(i, s, from, wanted)
  if not s.c then return end
  local records = call('ZRANGEBYLEX', R(i), '(' .. from .. '}', '+')
  for _, rec in ipairs(records) do
    local kind = string.sub(rec, 21, 21)
    local rest = string.sub(rec, 22)
    local bar = string.find(rest, '|', 1, true)
    local delta = string.sub(rest, 1, bar - 1)
    local field = string.sub(rest, bar + 1)
    -- An increment that cannot apply on top of this (older) assignment is left out: a newer
    -- assignment still on its way will replay it again, and that is the state that counts.
    if wanted(kind, field, string.sub(rec, 1, 19)) then
      if kind == 'i' then redis.pcall('INCRBY', K(i), delta)
      elseif kind == 'f' then redis.pcall('INCRBYFLOAT', K(i), delta)
      elseif kind == 'h' then redis.pcall('HINCRBY', K(i), field, delta)
      elseif kind == 'g' then redis.pcall('HINCRBYFLOAT', K(i), field, delta)
      elseif kind == 'z' then redis.pcall('ZINCRBY', K(i), delta, field) end
    end
  end
end

local function is_string_kind(kind) return kind == 'i' or kind == 'f' end

local CARDINALITY = { hash = 'HLEN', set = 'SCARD', zset = 'ZCARD' }
local MEMBERS = { hash = { 'HKEYS' }, set = { 'SMEMBERS' }, zset = { 'ZRANGE', 0, -1 } }

-- The members of collection key i of type `kind` (none for any other type).
local function members_of(i, kind)
  local listing = MEMBERS[kind]
  if not listing then return {} end
  return call(listing[1], K(i), unpack(listing, 2))
end

-- Everything of the key older than `vd` is gone — its data and its TTL; newer member and
-- counter writes stay. Returns whether anything changed.
local function destroy(i, s, vd)
  flush_key(i)
  local changed = false
  if vd > s.t then
    -- A delete is also a TTL write: "no TTL" at vd.
    s.t = vd
    changed = true
    if s.d > 0 then
      s.d = 0
      s.e = ZERO
      if vd <= s.f then call('PERSIST', K(i)) end
    end
  end
  if vd <= s.f then
    if changed then save(i) end
    return changed
  end
  s.f = vd
  save(i)
  local kept_registers = {}
  if s.g > vd then
    -- Some members were written after vd: keep exactly those.
    local registers = call('HGETALL', H(i))
    local dead = {}
    for j = 1, #registers, 2 do
      if registers[j + 1] <= vd then dead[#dead + 1] = registers[j] else kept_registers[registers[j]] = registers[j + 1] end
    end
    chunked('HDEL', { H(i) }, dead)
    local kind = redis.call('TYPE', K(i))['ok']
    local members = members_of(i, kind)
    local gone = {}
    for _, m in ipairs(members) do
      if not kept_registers[m] then gone[#gone + 1] = m end
    end
    if kind == 'hash' then chunked('HDEL', { K(i) }, gone)
    elseif kind == 'set' then chunked('SREM', { K(i) }, gone)
    elseif kind == 'zset' then chunked('ZREM', { K(i) }, gone)
    elseif kind ~= 'none' then call('DEL', K(i)) end
    -- The survivors were written after vd; a TTL the delete superseded no longer applies.
    if s.d == 0 then call('PERSIST', K(i)) end
  else
    call('DEL', K(i))
    if s.g ~= ZERO then
      call('DEL', H(i))
      s.g = ZERO
      s.n = 0
    end
  end
  if s.c then
    -- A surviving member already holds its increments; a removed or pruned one gets back
    -- those newer than its last assignment or removal.
    replay(i, s, vd, function(kind, field, version)
      if is_string_kind(kind) then return true end
      return kept_registers[field] == nil and version > register_of(i, s, field)
    end)
    call('ZREMRANGEBYLEX', R(i), '-', '(' .. vd)
  end
  return true
end

-- Whether a deadline d (with e, the version just after its millisecond) set at version v
-- has already deleted the key. A deadline already past when it was published is a delete at
-- v, whatever else happened. One that passed since fired at d unless a TTL write between v
-- and d replaced it first; the newest TTL write known (s.t) tells, except for one that is
-- itself still on its way (see docs/convergence.md, "Expiry races").
local function fires(s, v, d, e)
  if d >= NOW then return false end
  if e <= v then return true end
  return s.t <= v or s.t > e
end

local function apply_deadline(i, s)
  if s.d > 0 then call('PEXPIREAT', K(i), num(s.d)) end
end

-- The key's state; a deadline that has passed becomes a delete (once per call).
local fired = {}
local function load(i)
  local s = states[i]
  if not fired[i] then
    fired[i] = true
    if s.d > 0 and s.d < NOW then
      -- Redis expired the key at d: everything written before then is gone for good.
      destroy(i, s, vmax(s.t, s.e))
      s.d = 0
      s.e = ZERO
      save(i)
    end
  end
  return s
end

-- Records a counter increment once; nil when it was applied before.
local function record(i, s, version, kind, delta, field)
  local rec = version .. '|' .. kind .. delta .. '|' .. field
  if call('ZADD', R(i), 'NX', 0, rec) == 0 then return nil end
  if not s.c then
    s.c = true
    save(i)
    if s.x > 0 then call('PEXPIREAT', R(i), num(s.x)) end
  end
  return rec
end

-- Runs an increment; on failure forgets its record so a retry can apply it.
local function increment(i, rec, ...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then
    redis.call('ZREM', R(i), rec)
    error(r.err, 0)
  end
  redis.call('ZREMRANGEBYLEX', R(i), '-', '(' .. CUTOFF)
end

-- Indexes of `members` whose registers are older than v (a missing register is the prune
-- floor's).
local function newer_members(i, s, v, members)
  local got = {}
  local j = 1
  while j <= #members do
    local last = math.min(#members, j + 999)
    local part = redis.call('HMGET', H(i), unpack(members, j, last))
    for k = 1, #part do got[j + k - 1] = part[k] end
    j = last + 1
  end
  local fresh = {}
  for k = 1, #members do
    if v > (got[k] or s.p) then fresh[#fresh + 1] = k end
  end
  return fresh
end

local function set_registers(i, s, v, members, fresh)
  local args = {}
  for _, k in ipairs(fresh) do
    args[#args + 1] = members[k]
    args[#args + 1] = v
  end
  chunked('HSET', { H(i) }, args)
  if s.g == ZERO and s.x > 0 then call('PEXPIREAT', H(i), num(s.x)) end
  if v > s.g then
    s.g = v
    save(i)
  end
end

-- Registers of members that are no longer in the key are tombstones. Past the horizon
-- (older than CUTOFF) they may go: the prune floor p rises to the newest one pruned, and
-- since a missing register counts as p, only a write older than p — so older than the
-- horizon — is refused where the tombstone would have let it through. Present members keep
-- their registers (a late DEL needs them to tell which members to keep), and so do the
-- registers at g, so H never vanishes under a state that says it exists.
-- Runs after a removal, once H holds more than twice as many registers as the key has
-- members (plus slack, plus twice the recent tombstones the last prune had to keep), so its
-- O(HLEN) work is paid for by the removals that grew H: amortised O(1) per removal.
local PRUNE_SLACK = 32
local function prune(i, s, kind)
  local size = redis.call('HLEN', H(i))
  if size <= PRUNE_SLACK + 2 * s.n then return end
  if size <= 2 * call(CARDINALITY[kind], K(i)) + PRUNE_SLACK + 2 * s.n then return end
  local members = members_of(i, kind)
  local present = {}
  for _, m in ipairs(members) do present[m] = true end
  local registers = call('HGETALL', H(i))
  local dead = {}
  local recent = 0
  for j = 1, #registers, 2 do
    local member, r = registers[j], registers[j + 1]
    if not present[member] then
      if r >= CUTOFF then
        recent = recent + 1
      elseif r < s.g then
        dead[#dead + 1] = member
        if r > s.p then s.p = r end
      end
    end
  end
  chunked('HDEL', { H(i) }, dead)
  s.n = recent
  save(i)
end

local ops = {}

-- SET key value [PXAT d | KEEPTTL]: a whole-key write; operands: value, ttl mode, d, e.
ops.S = function(i, v, a)
  local value, mode, d, e = a[1], a[2], tonumber(a[3]), a[4]
  local s = load(i)
  -- Born expired: Redis deletes the key, so this is a delete at the later of this write and
  -- its deadline.
  local expired = mode == 'A' and fires(s, v, d, e)
  if v <= s.f or s.g > v or expired then
    -- The value itself does not survive: it is expired, or superseded by a newer whole-key
    -- write (whose TTL may still be this one's, when that write was a SET ... KEEPTTL), or,
    -- in a well-typed history, by a delete still on its way that sits between this SET and
    -- the members written after it.
    if expired then
      destroy(i, s, vmax(v, e))
    elseif v > s.f then
      destroy(i, s, v)
    elseif mode ~= 'K' and v > s.t then
      flush_key(i)
      s.t = v
      if mode == 'A' then s.d = d; s.e = e else s.d = 0; s.e = ZERO end
      if s.d > 0 then call('PEXPIREAT', K(i), num(s.d)) else call('PERSIST', K(i)) end
      save(i)
    else
      return
    end
    meta_expiry(i, s, exists(i))
    return
  end
  if mode ~= 'K' and v > s.t then
    s.t = v
    if mode == 'A' then s.d = d; s.e = e else s.d = 0; s.e = ZERO end
  end
  s.f = v
  save(i)
  if s.g ~= ZERO then
    -- Registers of an older incarnation's members are all older than this write.
    call('DEL', H(i))
    s.g = ZERO
    s.n = 0
  end
  if s.d == 0 and not s.c then
    -- The common case: the value and the state go out with the batch's single MSET, which
    -- also clears the key's TTL and, with x = 0, the state's own.
    pending_data[i] = value
    any_pending = true
    s.x = 0
    return
  end
  flush_key(i)
  if s.d > 0 then call('SET', K(i), value, 'PXAT', num(s.d)) else call('SET', K(i), value) end
  if s.c then
    replay(i, s, v, is_string_kind)
    call('ZREMRANGEBYLEX', R(i), '-', '(' .. v)
  end
  meta_expiry(i, s, true)
end

-- DEL key: operands none.
ops.D = function(i, v, a)
  local s = load(i)
  if destroy(i, s, v) then
    local live = exists(i)
    if live then apply_deadline(i, s) end
    meta_expiry(i, s, live)
  end
end

local function counter(kind, command)
  return function(i, v, a)
    local delta = a[1]
    local s = load(i)
    if v <= s.f then return end
    flush_key(i)
    local rec = record(i, s, v, kind, delta, '')
    if not rec then return end
    increment(i, rec, command, K(i), delta)
    apply_deadline(i, s)
    meta_expiry(i, s, true)
  end
end
ops.I = counter('i', 'INCRBY')
ops.F = counter('f', 'INCRBYFLOAT')

local function field_counter(kind, command)
  return function(i, v, a)
    local member, delta = a[1], a[2]
    local s = load(i)
    if v <= s.f then return end
    flush_key(i)
    if v <= register_of(i, s, member) then return end
    local rec = record(i, s, v, kind, delta, member)
    if not rec then return end
    if command == 'ZINCRBY' then
      increment(i, rec, command, K(i), delta, member)
    else
      increment(i, rec, command, K(i), member, delta)
    end
    apply_deadline(i, s)
    meta_expiry(i, s, true)
  end
end
ops.HI = field_counter('h', 'HINCRBY')
ops.HF = field_counter('g', 'HINCRBYFLOAT')
ops.ZI = field_counter('z', 'ZINCRBY')

-- Member assignments and removals: operands n, then n members (or n pairs: field value for
-- HSET, score member for ZADD). `removes` is the collection type a removal applies to, nil
-- for an assignment.
local function members_op(command, paired, value_first, removes, kinds)
  return function(i, v, a)
    local s = load(i)
    if v <= s.f then return end
    flush_key(i)
    local n = tonumber(a[1])
    local members, values = {}, {}
    for j = 1, n do
      if paired then
        if value_first then
          values[j] = a[2 * j]
          members[j] = a[2 * j + 1]
        else
          members[j] = a[2 * j]
          values[j] = a[2 * j + 1]
        end
      else
        members[j] = a[1 + j]
      end
    end
    local fresh = newer_members(i, s, v, members)
    if #fresh == 0 then return end
    local items = {}
    for _, k in ipairs(fresh) do
      if paired then
        if value_first then
          items[#items + 1] = values[k]
          items[#items + 1] = members[k]
        else
          items[#items + 1] = members[k]
          items[#items + 1] = values[k]
        end
      else
        items[#items + 1] = members[k]
      end
    end
    chunked(command, { K(i) }, items)
    set_registers(i, s, v, members, fresh)
    if s.c and kinds then
      local touched = {}
      for _, k in ipairs(fresh) do touched[members[k]] = true end
      replay(i, s, v, function(kind, field) return kinds[kind] and touched[field] end)
    end
    if removes then prune(i, s, removes) end
    local live = true
    if removes then live = exists(i) end
    if live then apply_deadline(i, s) end
    meta_expiry(i, s, live)
  end
end
local hash_kinds = { h = true, g = true }
local zset_kinds = { z = true }
ops.HS = members_op('HSET', true, false, false, hash_kinds)
ops.HD = members_op('HDEL', false, false, 'hash', hash_kinds)
ops.SA = members_op('SADD', false, false, false, nil)
ops.SR = members_op('SREM', false, false, 'set', nil)
ops.ZA = members_op('ZADD', true, true, false, zset_kinds)
ops.ZR = members_op('ZREM', false, false, 'zset', zset_kinds)

-- PEXPIREAT key d: operands d, e. The TTL register is compared with t only: a newer
-- SET ... KEEPTTL raised the data floor but kept whatever TTL this sets.
ops.X = function(i, v, a)
  local d, e = tonumber(a[1]), a[2]
  local s = load(i)
  if fires(s, v, d, e) then
    -- Already due: a delete at the later of this write and the deadline.
    destroy(i, s, vmax(v, e))
    local live = exists(i)
    if live then apply_deadline(i, s) end
    meta_expiry(i, s, live)
    return
  end
  if v <= s.t or d < NOW then return end
  flush_key(i)
  s.t = v
  s.d = d
  s.e = e
  call('PEXPIREAT', K(i), num(d))
  save(i)
  meta_expiry(i, s, exists(i))
end

-- PERSIST key: operands none.
ops.P = function(i, v, a)
  local s = load(i)
  if v <= s.t then return end
  flush_key(i)
  s.t = v
  s.d = 0
  s.e = ZERO
  call('PERSIST', K(i))
  save(i)
  meta_expiry(i, s, exists(i))
end

-- The type each op needs (nil: any) and leaves behind.
local needs = {
  I = 'string', F = 'string', HI = 'hash', HF = 'hash', HS = 'hash', HD = 'hash',
  SA = 'set', SR = 'set', ZA = 'zset', ZR = 'zset', ZI = 'zset',
}
local leaves = { S = 'string', D = 'none' }
local creates = { I = true, F = true, HI = true, HF = true, HS = true, SA = true, ZA = true, ZI = true }

local TYPE_WORDS = { string = 'a string', hash = 'a hash', set = 'a set', zset = 'a sorted set', list = 'a list', stream = 'a stream' }

-- Parse the batch.
local pos = 4
local messages = {}
for m = 1, tonumber(ARGV[3]) do
  local count = tonumber(ARGV[pos])
  pos = pos + 1
  local list = {}
  for _ = 1, count do
    local code, i, v, nargs = ARGV[pos], tonumber(ARGV[pos + 1]), ARGV[pos + 2], tonumber(ARGV[pos + 3])
    local operands = {}
    for j = 1, nargs do operands[j] = ARGV[pos + 3 + j] end
    pos = pos + 4 + nargs
    list[#list + 1] = { code = code, i = i, v = v, a = operands }
  end
  messages[m] = list
end

-- Refuses a message that would hit WRONGTYPE before any of it is written, so a poison
-- message changes nothing.
local function check_types(list)
  local planned = {}
  for _, op in ipairs(list) do
    local s = load(op.i)
    local want = needs[op.code]
    op.skip = false
    if want and op.v > s.f then
      if planned[op.i] == nil then
        flush_key(op.i)
        planned[op.i] = redis.call('TYPE', K(op.i))['ok']
      end
      local have = planned[op.i]
      if have ~= 'none' and have ~= want then
        if s.g > op.v then
          -- Members of another type were written after this op: in a well-typed history a
          -- delete between the two is still on its way, so this op is already superseded.
          op.skip = true
        else
          error('WRONGTYPE Operation against a key holding the wrong kind of value ('
            .. (TYPE_WORDS[want] or want) .. ' command on ' .. (TYPE_WORDS[have] or have)
            .. ' in this region)', 0)
        end
      elseif creates[op.code] and have == 'none' then
        planned[op.i] = want
      end
    end
    -- What a whole-key op leaves behind, when it is newer than the data there.
    local deadline = (op.code == 'X' and tonumber(op.a[1])) or (op.code == 'S' and op.a[2] == 'A' and tonumber(op.a[3]))
    local e = (op.code == 'X' and op.a[2]) or (op.code == 'S' and op.a[4])
    if deadline and fires(s, op.v, deadline, e) then
      if vmax(op.v, e) > s.f and s.g <= vmax(op.v, e) then planned[op.i] = 'none' end
    elseif leaves[op.code] and op.v > s.f then
      planned[op.i] = leaves[op.code]
    end
  end
end

local results = {}
for m, list in ipairs(messages) do
  local ok, err = pcall(function()
    check_types(list)
    for _, op in ipairs(list) do
      if not op.skip then ops[op.code](op.i, op.v, op.a) end
    end
  end)
  if ok then
    results[m] = 0
  else
    results[m] = tostring(err)
  end
end
flush()
return results
