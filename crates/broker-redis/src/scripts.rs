//! The Lua scripts. Each runs atomically on the Redis that holds the channel's keys (all of a
//! channel's keys share one hash tag, see [`crate::keys`]), is sent by EVALSHA and loaded on
//! `NOSCRIPT` (redis-rs `Script::invoke_async`).

use std::sync::LazyLock;

use redis::Script;

/// Publish with history and/or idempotency, in one round trip.
///
/// KEYS: meta, history stream, idempotency key (may be unused).
/// ARGV: topic, body (`{"d":..}` without offset), history size (0 = no history),
/// history ttl ms, meta ttl ms, epoch to use if the stream is new, idempotency ttl ms (0 = none).
/// Returns `{offset, epoch}` (`{0, ""}` without history); a repeated idempotency key returns
/// the first publish's result without publishing again.
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local meta, stream, idem = KEYS[1], KEYS[2], KEYS[3]
local topic, body = ARGV[1], ARGV[2]
local size, ttl, meta_ttl = tonumber(ARGV[3]), ARGV[4], ARGV[5]
local idem_ttl = tonumber(ARGV[7])
if idem_ttl > 0 then
  local prev = redis.call('GET', idem)
  if prev then
    local sep = string.find(prev, ':', 1, true)
    return {tonumber(string.sub(prev, 1, sep - 1)), string.sub(prev, sep + 1)}
  end
end
local offset, epoch, msg = 0, '', body
if size > 0 then
  if redis.call('HSETNX', meta, 'e', ARGV[6]) == 1 then
    -- A new stream: history left from an expired stream must not collide with new offsets.
    redis.call('DEL', stream)
  end
  offset = redis.call('HINCRBY', meta, 's', 1)
  epoch = redis.call('HGET', meta, 'e')
  redis.call('PEXPIRE', meta, meta_ttl)
  msg = '{"o":' .. offset .. ',' .. string.sub(body, 2)
  redis.call('XADD', stream, 'MAXLEN', size, offset, 'd', msg)
  redis.call('PEXPIRE', stream, ttl)
end
if idem_ttl > 0 then
  redis.call('SET', idem, offset .. ':' .. epoch, 'PX', idem_ttl)
end
redis.call('PUBLISH', topic, 'p' .. msg)
return {offset, epoch}
"#,
    )
});

/// Read the stream position and (optionally) publications, creating the stream if missing.
///
/// KEYS: meta, history stream.
/// ARGV: meta ttl ms (used when the stream is created), epoch to use if new, since offset
/// (-1 = none), limit (-1 = all, 0 = position only), reverse (1/0).
/// Returns `{top, epoch, publication...}`.
pub(crate) static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local meta, stream = KEYS[1], KEYS[2]
if redis.call('HSETNX', meta, 'e', ARGV[2]) == 1 then
  redis.call('DEL', stream)
  redis.call('PEXPIRE', meta, ARGV[1])
end
local top = tonumber(redis.call('HGET', meta, 's') or '0')
local res = {top, redis.call('HGET', meta, 'e')}
local since, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
if limit == 0 then return res end
local entries
if ARGV[5] == '1' then
  local upper = '+'
  if since >= 0 then
    if since <= 1 then return res end
    upper = tostring(since - 1)
  end
  if limit > 0 then
    entries = redis.call('XREVRANGE', stream, upper, '-', 'COUNT', limit)
  else
    entries = redis.call('XREVRANGE', stream, upper, '-')
  end
else
  local lower = '-'
  if since >= 0 then lower = tostring(since + 1) end
  if limit > 0 then
    entries = redis.call('XRANGE', stream, lower, '+', 'COUNT', limit)
  else
    entries = redis.call('XRANGE', stream, lower, '+')
  end
end
for _, e in ipairs(entries) do
  local fields = e[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'd' then res[#res + 1] = fields[i + 1] end
  end
end
return res
"#,
    )
});

/// Add or refresh a presence entry; the keys live at least as long as their newest entry.
///
/// KEYS: presence hash, expiry zset. ARGV: client id, encoded info, ttl ms.
pub(crate) static ADD_PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local ttl = tonumber(ARGV[3])
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for _, k in ipairs(KEYS) do
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
return 1
"#,
    )
});

/// Drop expired presence entries, then return the live ones.
///
/// KEYS: presence hash, expiry zset. ARGV: `all` (client, info, client, info, ...) or `values`
/// (info, info, ...).
pub(crate) static PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  for i = 1, #expired, 1000 do
    redis.call('HDEL', KEYS[1], unpack(expired, i, math.min(i + 999, #expired)))
  end
end
if ARGV[1] == 'all' then return redis.call('HGETALL', KEYS[1]) end
return redis.call('HVALS', KEYS[1])
"#,
    )
});
