//! Key and topic names, and which shard a channel lives on.
//!
//! Every key of a channel starts with the same hash-tagged base, so a Redis Cluster puts them in
//! one slot and one script can touch them all:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P.{C}.m` | hash | stream meta: `e` epoch, `s` top offset; expires `history_meta_ttl` after the last publish |
//! | `P.{C}.h` | stream | history; entry id = offset, field `d` = encoded publication; expires `history_ttl` after the last publish |
//! | `P.{C}.i.KEY` | string | `offset:epoch` of an idempotent publish; expires `idempotent_result_ttl` |
//! | `P.{C}.p` | hash | presence: client id → encoded client info |
//! | `P.{C}.z` | sorted set | presence expiry: client id → expire-at (ms, Redis clock) |
//!
//! `P` is the configured prefix and `C` the channel. A channel that is empty or contains a brace
//! cannot be its own hash tag; its base is `P.{#HASH}!C` instead (HASH = 16 hex digits of the
//! channel's FNV-1a hash). The character after the first `}` (`.` or `!`) keeps both forms
//! apart, so no two channels share a key.
//!
//! Pub/sub topics are not keys: `P.ch.C` carries a channel's publications, joins and leaves;
//! `P.control` carries node-to-node control messages.

use std::fmt::Write;

/// Names of one channel's keys.
#[derive(Debug, Clone)]
pub(crate) struct ChannelKeys {
    base: String,
}

impl ChannelKeys {
    pub(crate) fn new(prefix: &str, channel: &str) -> Self {
        let mut base = String::with_capacity(prefix.len() + channel.len() + 24);
        base.push_str(prefix);
        if channel.is_empty() || channel.contains(['{', '}']) {
            let _ = write!(base, ".{{#{:016x}}}!{channel}", fnv1a(channel.as_bytes()));
        } else {
            base.push_str(".{");
            base.push_str(channel);
            base.push('}');
        }
        Self { base }
    }

    fn with(&self, suffix: &str) -> String {
        let mut key = String::with_capacity(self.base.len() + suffix.len());
        key.push_str(&self.base);
        key.push_str(suffix);
        key
    }

    /// The stream meta hash.
    pub(crate) fn meta(&self) -> String {
        self.with(".m")
    }

    /// The history stream.
    pub(crate) fn history(&self) -> String {
        self.with(".h")
    }

    /// An idempotency key's result.
    pub(crate) fn idempotency(&self, key: &str) -> String {
        let mut k = self.with(".i.");
        k.push_str(key);
        k
    }

    /// Presence entries.
    pub(crate) fn presence(&self) -> String {
        self.with(".p")
    }

    /// Presence expiries.
    pub(crate) fn presence_expiry(&self) -> String {
        self.with(".z")
    }
}

/// The pub/sub topic of `channel`.
pub(crate) fn channel_topic(prefix: &str, channel: &str) -> String {
    let mut topic = String::with_capacity(prefix.len() + channel.len() + 4);
    topic.push_str(prefix);
    topic.push_str(".ch.");
    topic.push_str(channel);
    topic
}

/// The prefix that [`channel_topic`] puts before the channel name.
pub(crate) fn channel_topic_prefix(prefix: &str) -> String {
    format!("{prefix}.ch.")
}

/// The control topic.
pub(crate) fn control_topic(prefix: &str) -> String {
    format!("{prefix}.control")
}

/// FNV-1a, 64 bits: stable across processes and versions (unlike std's hashers), which sharding
/// needs since every node must pick the same shard.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Jump consistent hash (Lamping and Veach): the shard of `channel` among `shards`. Adding a
/// shard moves only about 1/n of the channels.
pub(crate) fn shard_of(channel: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut key = fnv1a(channel.as_bytes());
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < shards as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_tag(key: &str) -> &str {
        // Redis Cluster's rule: the text between the first '{' and the next '}', if not empty.
        if let Some(open) = key.find('{') {
            if let Some(close) = key[open + 1..].find('}') {
                if close > 0 {
                    return &key[open + 1..open + 1 + close];
                }
            }
        }
        key
    }

    #[test]
    fn a_channels_keys_share_one_hash_tag() {
        for channel in ["news", "chat:room#1,2", "", "a}b", "{x}", "}", "a{b"] {
            let k = ChannelKeys::new("sb", channel);
            let tag = slot_tag(&k.meta()).to_string();
            assert!(!tag.is_empty());
            for key in [
                k.history(),
                k.idempotency("x}{"),
                k.presence(),
                k.presence_expiry(),
            ] {
                assert_eq!(slot_tag(&key), tag, "{key}");
            }
        }
        assert_eq!(ChannelKeys::new("sb", "news").meta(), "sb.{news}.m");
    }

    #[test]
    fn distinct_channels_have_distinct_keys() {
        let names = ["a", "a}", "a}.m", "", "#", "{}", "a.m"];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let k = ChannelKeys::new("p", n);
            for key in [k.meta(), k.history(), k.presence(), k.presence_expiry()] {
                assert!(seen.insert(key.clone()), "duplicate {key}");
            }
        }
    }

    #[test]
    fn sharding_is_stable_and_spreads() {
        assert_eq!(shard_of("anything", 1), 0);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let s = shard_of(&format!("ch{i}"), 3);
            assert_eq!(s, shard_of(&format!("ch{i}"), 3));
            counts[s] += 1;
        }
        assert!(counts.iter().all(|c| *c > 800), "{counts:?}");
        // Growing from 3 to 4 shards moves only channels to the new shard.
        for i in 0..3000 {
            let ch = format!("ch{i}");
            let (before, after) = (shard_of(&ch, 3), shard_of(&ch, 4));
            assert!(after == before || after == 3);
        }
    }
}
