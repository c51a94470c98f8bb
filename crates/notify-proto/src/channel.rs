//! Redis channel and key names: `{prefix}{REGION}`, default prefix `tvs:` (the seed's `tvs:AE`).
//!
//! Two layouts. On one Redis, a region's live channel is `tvs:AE` and its stream
//! `tvs:AE:stream` (the names existing deployments hold their history under). On a Redis
//! Cluster the region code is a hash tag, so the stream `tvs:{AE}:stream` and the shard channel
//! `tvs:{AE}` hash to one slot and the publish script (XADD, then SPUBLISH) runs on one shard;
//! the seed's plain channel `tvs:AE` is still listened to (a plain PUBLISH reaches every node).

use crate::region::Region;

/// The seed's channel prefix.
pub const DEFAULT_CHANNEL_PREFIX: &str = "tvs:";

/// Where a region's names live: one Redis, or a Redis Cluster (hash-tagged names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyLayout {
    /// One Redis: `tvs:AE`, `tvs:AE:stream`.
    #[default]
    Single,
    /// A Redis Cluster: `tvs:{AE}` (shard channel), `tvs:{AE}:stream`, one slot per region.
    Cluster,
}

impl KeyLayout {
    /// The layout for a Redis that is a cluster (`--redis-cluster`) or not.
    pub fn for_cluster(cluster: bool) -> Self {
        if cluster {
            KeyLayout::Cluster
        } else {
            KeyLayout::Single
        }
    }
}

/// Maps regions to Redis channel names and back, for one prefix and layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelNames {
    prefix: String,
    layout: KeyLayout,
}

impl Default for ChannelNames {
    fn default() -> Self {
        ChannelNames::new(DEFAULT_CHANNEL_PREFIX)
    }
}

impl ChannelNames {
    /// Channel names under `prefix` (e.g. `tvs:` or `staging:tvs:`).
    pub fn new(prefix: impl Into<String>) -> Self {
        ChannelNames {
            prefix: prefix.into(),
            layout: KeyLayout::Single,
        }
    }

    /// The same names in `layout`.
    pub fn with_layout(mut self, layout: KeyLayout) -> Self {
        self.layout = layout;
        self
    }

    /// The layout these names follow.
    pub fn layout(&self) -> KeyLayout {
        self.layout
    }

    /// The part of a name that identifies `region`: `AE`, or the hash tag `{AE}` in a cluster.
    fn tag(&self, region: Region) -> String {
        match self.layout {
            KeyLayout::Single => region.as_str().to_owned(),
            KeyLayout::Cluster => format!("{{{region}}}"),
        }
    }

    /// The prefix these names use.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The channel our publish script publishes `region`'s messages on: `tvs:AE`, or the
    /// shard channel `tvs:{AE}` in a cluster.
    pub fn channel(&self, region: Region) -> String {
        format!("{}{}", self.prefix, self.tag(region))
    }

    /// The seed's plain channel for `region`, `tvs:AE`, in either layout: what a plain
    /// `PUBLISH` (the seed's PHP class) is sent to.
    pub fn plain_channel(&self, region: Region) -> String {
        format!("{}{}", self.prefix, region)
    }

    /// The region a channel belongs to ([`channel`](Self::channel) or
    /// [`plain_channel`](Self::plain_channel)), or `None` when the channel is not one of ours.
    /// Exact: `tvs:ae` is not a channel of ours (publishers use the canonical form).
    pub fn region_of(&self, channel: &str) -> Option<Region> {
        let rest = channel.strip_prefix(self.prefix.as_str())?;
        let code = match self.layout {
            KeyLayout::Cluster => rest
                .strip_prefix('{')
                .and_then(|tagged| tagged.strip_suffix('}'))
                .unwrap_or(rest),
            KeyLayout::Single => rest,
        };
        let region = Region::parse(code).ok()?;
        (region.as_str() == code).then_some(region)
    }

    /// The Redis key of the region's history stream: `{prefix}{REGION}:stream`, or
    /// `{prefix}{{REGION}}:stream` in a cluster.
    pub fn stream_key(&self, region: Region) -> String {
        format!("{}{}:stream", self.prefix, self.tag(region))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let names = ChannelNames::default();
        let ae = Region::parse("AE").unwrap();
        assert_eq!(names.channel(ae), "tvs:AE");
        assert_eq!(names.region_of("tvs:AE"), Some(ae));
        assert_eq!(names.region_of("tvs:ae"), None);
        assert_eq!(names.region_of("tvs:ZZ"), None);
        assert_eq!(names.region_of("other:AE"), None);
        let custom = ChannelNames::new("staging:tvs:");
        assert_eq!(custom.channel(ae), "staging:tvs:AE");
        assert_eq!(custom.region_of("staging:tvs:AE"), Some(ae));
        assert_eq!(names.stream_key(ae), "tvs:AE:stream");
        assert_eq!(names.plain_channel(ae), "tvs:AE");
        assert_eq!(names.region_of("tvs:{AE}"), None);
    }

    #[test]
    fn cluster_names_share_one_hash_tag() {
        let names = ChannelNames::default().with_layout(KeyLayout::Cluster);
        let ae = Region::parse("AE").unwrap();
        assert_eq!(names.channel(ae), "tvs:{AE}");
        assert_eq!(names.stream_key(ae), "tvs:{AE}:stream");
        assert_eq!(names.plain_channel(ae), "tvs:AE");
        assert_eq!(names.region_of("tvs:{AE}"), Some(ae));
        assert_eq!(names.region_of("tvs:AE"), Some(ae));
        assert_eq!(names.region_of("tvs:{AE"), None);
        assert_eq!(names.region_of("tvs:{ae}"), None);
    }
}
