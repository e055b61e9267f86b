//! Lua scripts: each runs atomically on the server, so checks and writes cannot race
//! with other consumers.

/// Appends a batch. KEYS: the stream, this window's id hash, the previous window's id
/// hash. ARGV: id hash TTL (ms), trim kind (`""`, `MAXLEN` or `MINID`), trim value, the
/// number of records `n`, their `n` event ids, then per record its field count `k` and
/// `k` field/value arguments. A record whose id either hash holds is not appended again;
/// its first stream id is returned instead. Two `HMGET`s and one `HSET` per batch, so
/// idempotence costs little beside the `XADD`s.
pub(crate) const APPEND: &str = r#"
local n = tonumber(ARGV[4])
local trim = ARGV[2] ~= '' and ARGV[2] or nil
local ids = {}
for r = 1, n do ids[r] = ARGV[4 + r] end
-- Lua's unpack takes a few thousand values at most: work in slices.
local function hmget(key)
  local all = {}
  for from = 1, n, 1000 do
    local part = redis.call('HMGET', key, unpack(ids, from, math.min(from + 999, n)))
    for j = 1, #part do all[from + j - 1] = part[j] end
  end
  return all
end
local cur = hmget(KEYS[2])
local prev = hmget(KEYS[3])
local out = {}
local fresh = {}
local marks = {}
local i = 5 + n
for r = 1, n do
  local k = tonumber(ARGV[i])
  local existing = cur[r] or prev[r] or fresh[ids[r]]
  if existing then
    out[r] = existing
  else
    -- The entry's fields straight from ARGV: no table built per entry.
    local sid
    if trim then
      sid = redis.call('XADD', KEYS[1], trim, '~', ARGV[3], '*', unpack(ARGV, i + 1, i + k))
    else
      sid = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + k))
    end
    fresh[ids[r]] = sid
    marks[#marks + 1] = ids[r]
    marks[#marks + 1] = sid
    out[r] = sid
  end
  i = i + k + 1
end
if #marks > 0 then
  for from = 1, #marks, 2000 do
    redis.call('HSET', KEYS[2], unpack(marks, from, math.min(from + 1999, #marks)))
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return out
"#;

/// Claims entries of the group idle for at least the visibility timeout (timed out or
/// nacked) for this consumer, with their delivery counts. KEYS[1]: the stream. ARGV:
/// group, consumer, min idle (ms), cursor, count. Returns `{next cursor, {id, count,
/// fields}...}`.
pub(crate) const CLAIM: &str = r#"
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {r[1]}
for _, e in ipairs(r[2]) do
  if type(e) == 'table' and type(e[2]) == 'table' then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    local count = 1
    if p[1] then count = p[1][4] end
    out[#out + 1] = {e[1], count, e[2]}
  end
end
return out
"#;

/// Acks deliveries still held. KEYS[1]: the stream. ARGV: group, consumer, then
/// id/delivery-count pairs. An entry is acked only if this consumer holds it and its
/// delivery count is the one delivered (so a stale handle, after a redelivery, does
/// nothing). Returns how many were acked.
pub(crate) const ACK: &str = r#"
local n = 0
for i = 3, #ARGV, 2 do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] and tostring(p[1][4]) == ARGV[i + 1] then
    n = n + redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  end
end
return n
"#;

/// Sets a held delivery's idle time (without counting a delivery). KEYS[1]: the
/// stream. ARGV: group, consumer, id, delivery count, mode (`nack` or `extend`),
/// milliseconds. `nack`: idle as long as Redis allows, so any consumer's next claim
/// takes it at once. `extend`: idle decreases by ARGV[6] (not below 0). Returns 1, or 0 when the
/// delivery is no longer held.
pub(crate) const SETTLE: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] or tostring(p[1][4]) ~= ARGV[4] then
  return 0
end
local idle = tonumber(ARGV[6])
if ARGV[5] == 'nack' then
  -- Redis clamps a delivery time before the epoch to now, so the longest idle time
  -- that sticks is "delivered at the epoch" (server clock).
  local t = redis.call('TIME')
  idle = tonumber(t[1]) * 1000 - 1000
elseif ARGV[5] == 'extend' then
  idle = p[1][3] - idle
  if idle < 0 then idle = 0 end
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', idle, 'JUSTID')
return 1
"#;

/// Takes or renews a lease. KEYS[1]: the lease key, KEYS[2]: the lease index (a
/// sorted set of lease names, for listing by prefix). ARGV: holder, ttl (ms), name.
pub(crate) const LEASE_ACQUIRE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('ZADD', KEYS[2], 0, ARGV[3])
  return 1
end
return 0
"#;

/// Gives a lease up if `holder` has it. KEYS[1]: the lease key, KEYS[2]: the lease
/// index. ARGV: holder, name.
pub(crate) const LEASE_RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Forgets attempt counts below an offset. KEYS[1]: the attempts hash. ARGV[1]: offset.
pub(crate) const CLEAR_ATTEMPTS: &str = r#"
local gone = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if tonumber(field) < tonumber(ARGV[1]) then gone[#gone + 1] = field end
end
for from = 1, #gone, 1000 do
  redis.call('HDEL', KEYS[1], unpack(gone, from, math.min(from + 999, #gone)))
end
return #gone
"#;
