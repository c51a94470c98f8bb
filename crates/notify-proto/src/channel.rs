//! Redis channel names: `{prefix}{REGION}`, default prefix `tvs:` (the seed's `tvs:AE`).

use crate::region::Region;

/// The seed's channel prefix.
pub const DEFAULT_CHANNEL_PREFIX: &str = "tvs:";

/// Maps regions to Redis channel names and back, for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelNames {
    prefix: String,
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
        }
    }

    /// The prefix these names use.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pub/sub channel for `region`: `tvs:AE`.
    pub fn channel(&self, region: Region) -> String {
        format!("{}{}", self.prefix, region)
    }

    /// The region a channel belongs to, or `None` when the channel is not one of ours.
    /// Exact: `tvs:ae` is not a channel of ours (publishers use the canonical form).
    pub fn region_of(&self, channel: &str) -> Option<Region> {
        let code = channel.strip_prefix(self.prefix.as_str())?;
        let region = Region::parse(code).ok()?;
        (region.as_str() == code).then_some(region)
    }

    /// The Redis key of the region's history stream: `{prefix}{REGION}:stream`.
    pub fn stream_key(&self, region: Region) -> String {
        format!("{}{}:stream", self.prefix, region)
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
    }
}
