//! The Lua scripts the broker runs in Redis, in one place: what each reads and writes is the
//! contract between publishers and gateways (see `docs/PROTOCOL.md`).

use notify_proto::KeyLayout;

/// Atomically records a notification in its region's stream and publishes it with its id.
///
/// `KEYS[1]` stream key; `ARGV[1]` channel; `ARGV[2]` the notification as a JSON object
/// without `id`; `ARGV[3]` retention (approximate `MAXLEN`). Returns `{id, subscribers}`.
pub const PUBLISH_SCRIPT: &str = r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'payload', ARGV[2])
local message = '{"id":"' .. id .. '",' .. string.sub(ARGV[2], 2)
return {id, redis.call('PUBLISH', ARGV[1], message)}
"#;

/// [`PUBLISH_SCRIPT`] for a Redis Cluster: the same, with `SPUBLISH` to the region's shard
/// channel (`ARGV[1]`, in the stream's slot), so only the shard owning the region sends it.
/// Returns `{id, subscribers on that shard}`.
pub const SHARDED_PUBLISH_SCRIPT: &str = r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'payload', ARGV[2])
local message = '{"id":"' .. id .. '",' .. string.sub(ARGV[2], 2)
return {id, redis.call('SPUBLISH', ARGV[1], message)}
"#;

/// Reads streams after given ids, with the facts needed to tell whether anything after each id
/// was trimmed or lost, all as of one instant (a script runs atomically).
///
/// `KEYS` stream keys; `ARGV[1]` most entries per stream (0: none); `ARGV[1 + i]` the exclusive
/// start id for `KEYS[i]`. Returns, per key, `{last_generated_id, entries_added, length,
/// start_present, entries}`: `last_generated_id` is empty when the stream does not exist,
/// `entries_added` is -1 before Redis 7, `start_present` is 1 when the start id itself is
/// still an entry of the stream.
pub const READ_SCRIPT: &str = r#"
local count = tonumber(ARGV[1])
local result = {}
for i, key in ipairs(KEYS) do
  local since = ARGV[i + 1]
  if redis.call('EXISTS', key) == 0 then
    result[i] = {'', 0, 0, 0, {}}
  else
    local info = redis.call('XINFO', 'STREAM', key)
    local last, added, length = '', -1, 0
    for j = 1, #info, 2 do
      local field = info[j]
      if field == 'last-generated-id' then last = info[j + 1]
      elseif field == 'entries-added' then added = info[j + 1]
      elseif field == 'length' then length = info[j + 1] end
    end
    local present = 0
    if #redis.call('XRANGE', key, since, since) > 0 then present = 1 end
    local entries = {}
    if count > 0 then
      entries = redis.call('XRANGE', key, '(' .. since, '+', 'COUNT', count)
    end
    result[i] = {last, added, length, present, entries}
  end
end
return result
"#;

/// The publish script for `layout` ([`PUBLISH_SCRIPT`], or [`SHARDED_PUBLISH_SCRIPT`] in a
/// cluster) as a [`redis::Script`].
pub fn publish_script(layout: KeyLayout) -> redis::Script {
    redis::Script::new(match layout {
        KeyLayout::Single => PUBLISH_SCRIPT,
        KeyLayout::Cluster => SHARDED_PUBLISH_SCRIPT,
    })
}

/// [`READ_SCRIPT`] as a [`redis::Script`].
pub fn read_script() -> redis::Script {
    redis::Script::new(READ_SCRIPT)
}
