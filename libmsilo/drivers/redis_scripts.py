"""Lua scripts of the Redis driver (see :mod:`libmsilo.drivers.redis` for the key layout).

Each script runs in one hash slot: the "group" scripts touch only keys under one ``{prefix:gN}``
tag (message hashes and the owner sets of owners hashed into that group), the "bucket" scripts
only keys under one ``{prefix:bN}`` tag. Owner keys are derived inside the scripts from the
``username`` / ``domain`` fields of a message hash; they live in the same slot as the message, which
Redis allows for keys a script did not declare.

Field names are the layout's column names, spliced into the source as Lua string literals (they
are plain identifiers, so no quoting can break). Times are compared as Lua numbers (doubles): exact
for epoch values below 2**53.
"""

from __future__ import annotations

from .base import LEASE_FIELDS, MESSAGE_FIELDS

__all__ = ["INSERT_WIDTH", "RECORD_FIELDS", "SCRIPT_NAMES", "build_scripts"]

#: StoredMessage attributes in the order the scripts return a record's fields.
RECORD_FIELDS = ("mid", *MESSAGE_FIELDS, *LEASE_FIELDS)

_PRELUDE = """
local F_MID, F_SRC, F_DST, F_BODY, F_CTYPE = {mid}, {src_addr}, {dst_addr}, {body}, {ctype}
local F_USER, F_DOMAIN, F_EXTRA, F_CALLID = {username}, {domain}, {extra_hdrs}, {callid}
local F_INC, F_EXP, F_SND = {inc_time}, {exp_time}, {snd_time}
local F_TOKEN, F_UNTIL, F_ATT = {lease_token}, {lease_until}, {attempts}
local RECORD = {{{record}}}
-- Positions in RECORD (see RECORD_FIELDS) of the fields the claims check and set.
local R_EXP, R_SND, R_TOKEN, R_UNTIL = {r_exp}, {r_snd}, {r_token}, {r_until}
local BUCKETS = {buckets}
-- '{{prefix:' on standalone Redis, where the bucket indexes are on the same server and are kept
-- in the same atomic step; '' on a cluster, where the caller updates them after the script.
local BUCKET_BASE = table.remove(ARGV, 1)

-- An owner's key: the length prefix keeps (user, domain) pairs apart whatever they contain.
local function owner_key(base, user, domain, suffix)
  return base .. 'o:' .. #user .. ':' .. user .. '@' .. domain .. ':' .. suffix
end

local function bucket_key(mid, suffix)
  return BUCKET_BASE .. 'b' .. string.format('%d', tonumber(mid) % BUCKETS) .. '}}:' .. suffix
end

local function index(mid, exp, snd)
  if BUCKET_BASE == '' then return end
  redis.call('ZADD', bucket_key(mid, 'exp'), exp, mid)
  if tonumber(snd) > 0 then redis.call('ZADD', bucket_key(mid, 'rem'), snd, mid) end
end

local function unindex(mid, also_exp)
  if BUCKET_BASE == '' then return end
  if also_exp then redis.call('ZREM', bucket_key(mid, 'exp'), mid) end
  redis.call('ZREM', bucket_key(mid, 'rem'), mid)
end

local function record(key)
  return redis.call('HMGET', key, unpack(RECORD))
end

-- True when no live lease holds the message.
local function lease_free(token, until_, now)
  return (not token) or (tonumber(until_ or '0') <= now)
end

-- Lease a message whose record ``r`` the caller read; returns the record as leased.
local function lease(key, r, token, until_)
  redis.call('HSET', key, F_TOKEN, token, F_UNTIL, until_)
  r[R_TOKEN], r[R_UNTIL] = token, until_
  return r
end

-- Delete one message hash and its entries in the owner's sets and (standalone) the buckets;
-- user, domain and snd are its fields, read by the caller. Returns 0 when there was no hash.
-- A message is in the owner's 'off' set when snd_time is 0 and in the 'rem' index when it is
-- above 0, never both (insert and release keep it so in their step), so only that one entry is
-- removed; a hash without a readable snd_time has both removed.
local function drop(base, key, mid, user, domain, snd)
  if redis.call('DEL', key) == 0 then return 0 end
  local s = tonumber(snd or '')
  if user then
    redis.call('ZREM', owner_key(base, user, domain or '', 'exp'), mid)
    if not s or s <= 0 then redis.call('ZREM', owner_key(base, user, domain or '', 'off'), mid) end
  end
  if BUCKET_BASE ~= '' then
    redis.call('ZREM', bucket_key(mid, 'exp'), mid)
    if not s or s > 0 then redis.call('ZREM', bucket_key(mid, 'rem'), mid) end
  end
  return 1
end
"""

# Every group script takes the bucket base (see the prelude) as its first ARGV, removed before
# the ARGV positions below are counted.

#: ARGV items per message of the insert script.
INSERT_WIDTH = 12

# KEYS: the messages' hashes (one slot on a cluster). ARGV: max_messages, then INSERT_WIDTH
# values per message: mid, inc_time, exp_time, snd_time, src_addr, dst_addr, username, domain,
# body, ctype, extra_hdrs, callid (an empty extra_hdrs or callid is left out of the hash).
# Returns one answer per message, in order: 1 stored (also when an earlier, retried call stored
# this very message), 0 its owner at quota. Messages are stored in turn, so an owner's quota
# counts the ones before it in the same call.
_INSERT = """
local max = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local a = (i - 1) * INSERT_WIDTH + 1
  local mid, inc, exp, snd = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local user, domain = ARGV[a + 7], ARGV[a + 8]
  out[i] = 1
  if redis.call('EXISTS', key) == 0 then
    -- The key is base .. 'm:' .. mid: the owner keys share its base (its slot).
    local base = string.sub(key, 1, #key - #mid - 2)
    local exp_key = owner_key(base, user, domain, 'exp')
    if max > 0 and redis.call('ZCOUNT', exp_key, '(' .. inc, '+inf') >= max then
      out[i] = 0
    else
      local f = {F_MID, mid, F_SRC, ARGV[a + 5], F_DST, ARGV[a + 6], F_USER, user,
        F_DOMAIN, domain, F_BODY, ARGV[a + 9], F_CTYPE, ARGV[a + 10], F_INC, inc, F_EXP, exp,
        F_SND, snd, F_ATT, '0'}
      if ARGV[a + 11] ~= '' then f[#f + 1] = F_EXTRA; f[#f + 1] = ARGV[a + 11] end
      if ARGV[a + 12] ~= '' then f[#f + 1] = F_CALLID; f[#f + 1] = ARGV[a + 12] end
      redis.call('HSET', key, unpack(f))
      redis.call('ZADD', exp_key, exp, mid)
      if tonumber(snd) == 0 then
        redis.call('ZADD', owner_key(base, user, domain, 'off'), mid, mid)
      end
      index(mid, exp, snd)
    end
  end
end
return out
""".replace("INSERT_WIDTH", str(INSERT_WIDTH))

# KEYS: owner off set. ARGV: message key base, now, lease_until, token, limit.
# Leases the owner's deliverable messages in mid order; returns their records.
_CLAIM = """
local base, now, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[5])
local out, stale = {}, {}
local total = redis.call('ZCARD', KEYS[1])
local start, done = 0, false
while start < total and not done do
  local mids = redis.call('ZRANGE', KEYS[1], start, start + 199)
  if #mids == 0 then break end
  for _, mid in ipairs(mids) do
    local key = base .. mid
    local r = record(key)
    if not r[R_EXP] then
      stale[#stale + 1] = mid
    elseif tonumber(r[R_EXP]) > now and tonumber(r[R_SND]) == 0
        and lease_free(r[R_TOKEN], r[R_UNTIL], now) then
      out[#out + 1] = lease(key, r, ARGV[4], ARGV[3])
      if limit > 0 and #out >= limit then done = true; break end
    end
  end
  start = start + 200
end
for _, mid in ipairs(stale) do redis.call('ZREM', KEYS[1], mid) end
return out
"""

# KEYS: message hashes of one group. ARGV: now, lease_until, token, mid1, mid2, ...
# Leases the due reminders among them; returns {records, mids to drop from the reminder index}.
_CLAIM_REMINDERS = """
local now = tonumber(ARGV[1])
local out, stale = {}, {}
for i, key in ipairs(KEYS) do
  local mid = ARGV[i + 3]
  local r = record(key)
  local snd = tonumber(r[R_SND] or '0')
  if not r[R_EXP] or snd <= 0 then
    stale[#stale + 1] = mid
    unindex(mid, false)
  elseif tonumber(r[R_EXP]) > now and snd <= now and lease_free(r[R_TOKEN], r[R_UNTIL], now) then
    out[#out + 1] = lease(key, r, ARGV[3], ARGV[2])
  end
end
return {out, stale}
"""

# KEYS: message hashes (one slot on a cluster). ARGV: their mids.
# Returns one answer per message, in order: 1 deleted, 0 absent.
_DELETE = """
local out = {}
for i, key in ipairs(KEYS) do
  local mid = ARGV[i]
  local m = redis.call('HMGET', key, F_USER, F_DOMAIN, F_SND)
  -- The key is base .. 'm:' .. mid: the owner keys share its base (its slot).
  out[i] = drop(string.sub(key, 1, #key - #mid - 2), key, mid, m[1], m[2], m[3])
end
return out
"""

# KEYS: message hash. ARGV: group key base, mid, has_token (1/0), token, to_offline (1/0),
# max_attempts. Returns {code, snd_time before}: code 0 not found, 1 released, 2 dropped.
_RELEASE = """
local m = redis.call('HMGET', KEYS[1], F_TOKEN, F_ATT, F_SND, F_USER, F_DOMAIN)
if not m[1] or (ARGV[3] == '1' and m[1] ~= ARGV[4]) then return {0, '0'} end
local attempts = tonumber(m[2] or '0') + 1
local max = tonumber(ARGV[6])
if max > 0 and attempts >= max then
  drop(ARGV[1], KEYS[1], ARGV[2], m[4], m[5], m[3])
  return {2, m[3]}
end
redis.call('HDEL', KEYS[1], F_TOKEN, F_UNTIL)
redis.call('HSET', KEYS[1], F_ATT, tostring(attempts))
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], F_SND, '0')
  redis.call('ZADD', owner_key(ARGV[1], m[4], m[5] or '', 'off'), ARGV[2], ARGV[2])
  unindex(ARGV[2], false)
end
return {1, m[3]}
"""

# KEYS: owner exp set. ARGV: message key base, now, limit. The owner's unexpired records by mid.
_LIST = """
local limit = tonumber(ARGV[3])
local mids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf')
table.sort(mids, function(a, b) return tonumber(a) < tonumber(b) end)
local out = {}
for _, mid in ipairs(mids) do
  local r = record(ARGV[1] .. mid)
  if r[1] then
    out[#out + 1] = r
    if limit > 0 and #out >= limit then break end
  end
end
return out
"""

# KEYS: owner exp set, owner off set. ARGV: message key base.
# Deletes all the owner's messages; returns {how many, their mids}.
_PURGE = """
local mids = redis.call('ZRANGE', KEYS[1], 0, -1)
local n = 0
for _, mid in ipairs(mids) do
  n = n + redis.call('DEL', ARGV[1] .. mid)
  unindex(mid, true)
end
redis.call('DEL', KEYS[1], KEYS[2])
return {n, mids}
"""

# KEYS: message hashes of one group. ARGV: group key base, now, mid1, mid2, ...
# Deletes the expired ones; returns {how many, mids to drop from the bucket indexes}.
_EXPIRE = """
local now = tonumber(ARGV[2])
local n, gone = 0, {}
for i, key in ipairs(KEYS) do
  local mid = ARGV[i + 2]
  local m = redis.call('HMGET', key, F_EXP, F_USER, F_DOMAIN, F_SND)
  if not m[1] then
    gone[#gone + 1] = mid
    unindex(mid, true)
  elseif tonumber(m[1]) <= now then
    drop(ARGV[1], key, mid, m[2], m[3], m[4])
    n = n + 1
    gone[#gone + 1] = mid
  end
end
return {n, gone}
"""

# Cluster only. KEYS: bucket exp index, bucket reminder index.
# ARGV: mid, exp_time, snd_time of each message.
_INDEX = """
for i = 1, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
  if tonumber(ARGV[i + 2]) > 0 then redis.call('ZADD', KEYS[2], ARGV[i + 2], ARGV[i]) end
end
return 1
"""

# Cluster only. KEYS: bucket exp index, bucket reminder index. ARGV: also_exp (1/0), mid, ...
_UNINDEX = """
if ARGV[1] == '1' then redis.call('ZREM', KEYS[1], unpack(ARGV, 2)) end
redis.call('ZREM', KEYS[2], unpack(ARGV, 2))
return 1
"""

_GROUP_SCRIPTS = {
    "insert": _INSERT,
    "claim": _CLAIM,
    "claim_reminders": _CLAIM_REMINDERS,
    "delete": _DELETE,
    "release": _RELEASE,
    "list": _LIST,
    "purge": _PURGE,
    "expire": _EXPIRE,
}
_BUCKET_SCRIPTS = {"index": _INDEX, "unindex": _UNINDEX}

#: Every script :func:`build_scripts` returns.
SCRIPT_NAMES = tuple(_GROUP_SCRIPTS) + tuple(_BUCKET_SCRIPTS)


def _lua_str(name: str) -> str:
    # Column names are validated identifiers; quoting them is enough.
    return "'" + name + "'"


def _lua_pos(attr: str) -> int:
    # Lua tables count from 1.
    return RECORD_FIELDS.index(attr) + 1


def build_scripts(columns: dict[str, str], buckets: int) -> dict[str, str]:
    """The Lua source of every script, with ``columns`` (attribute -> field name) and the
    number of bucket keys spliced in."""
    prelude = _PRELUDE.format(
        buckets=int(buckets),
        record=", ".join(_lua_str(columns[a]) for a in RECORD_FIELDS),
        r_exp=_lua_pos("exp_time"),
        r_snd=_lua_pos("snd_time"),
        r_token=_lua_pos("lease_token"),
        r_until=_lua_pos("lease_until"),
        **{a: _lua_str(columns[a]) for a in RECORD_FIELDS},
    )
    scripts = {name: prelude + body for name, body in _GROUP_SCRIPTS.items()}
    scripts.update(_BUCKET_SCRIPTS)
    return scripts
