//! Regions: ISO 3166-1 alpha-2 country codes.
//!
//! A [`Region`] is two uppercase ASCII letters that ISO 3166-1 has assigned to a country or
//! territory. Input is case-insensitive (`ae`, `Ae` and `AE` are the same region); output is
//! always the canonical uppercase form. Anything else is a [`RegionError`] that names the input.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The regions the seed deployment served, in the seed's order. The gateway serves these when
/// no other list is configured.
pub const SEED_REGIONS: [Region; 8] = [
    Region(*b"AE"),
    Region(*b"FI"),
    Region(*b"CZ"),
    Region(*b"DK"),
    Region(*b"BE"),
    Region(*b"GB"),
    Region(*b"CH"),
    Region(*b"US"),
];

/// The 249 officially assigned ISO 3166-1 alpha-2 codes (ISO 3166 Maintenance Agency list),
/// sorted so that membership is a binary search.
const ASSIGNED: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// Regions whose main language is written right to left, with that language's BCP 47 tag.
///
/// Source: Unicode CLDR `likelySubtags.xml` — the territories `XX` for which `und_XX` resolves
/// to a language in the Arabic (`Arab`), Hebrew (`Hebr`) or Thaana (`Thaa`) script. The seed
/// listed only AE and IL; this is the full set. Sorted by region.
const RIGHT_TO_LEFT: [(&str, &str); 26] = [
    ("AE", "ar"),
    ("AF", "fa"),
    ("BH", "ar"),
    ("DZ", "ar"),
    ("EG", "ar"),
    ("EH", "ar"),
    ("IL", "he"),
    ("IQ", "ar"),
    ("IR", "fa"),
    ("JO", "ar"),
    ("KM", "ar"),
    ("KW", "ar"),
    ("LB", "ar"),
    ("LY", "ar"),
    ("MA", "ar"),
    ("MR", "ar"),
    ("MV", "dv"),
    ("OM", "ar"),
    ("PK", "ur"),
    ("PS", "ar"),
    ("QA", "ar"),
    ("SA", "ar"),
    ("SD", "ar"),
    ("SY", "ar"),
    ("TN", "ar"),
    ("YE", "ar"),
];

/// Codes people type for a region that are not its ISO 3166-1 alpha-2 code: reserved or
/// customary two-letter codes (UK, EL), and the alpha-3 codes of the seed regions and of the
/// most populous countries. Sorted by the mistaken code.
const MISTAKEN_CODES: [(&str, &str); 30] = [
    ("ARE", "AE"),
    ("AUS", "AU"),
    ("BEL", "BE"),
    ("BRA", "BR"),
    ("CAN", "CA"),
    ("CHE", "CH"),
    ("CHN", "CN"),
    ("CZE", "CZ"),
    ("DEU", "DE"),
    ("DNK", "DK"),
    ("EL", "GR"),
    ("ESP", "ES"),
    ("FIN", "FI"),
    ("FRA", "FR"),
    ("GBR", "GB"),
    ("IND", "IN"),
    ("ISR", "IL"),
    ("ITA", "IT"),
    ("JPN", "JP"),
    ("KOR", "KR"),
    ("MEX", "MX"),
    ("NLD", "NL"),
    ("POL", "PL"),
    ("RUS", "RU"),
    ("SAU", "SA"),
    ("SWE", "SE"),
    ("TUR", "TR"),
    ("UAE", "AE"),
    ("UK", "GB"),
    ("USA", "US"),
];

/// The region meant by a mistaken code (`UK` → GB, `usa` → US), if it is a known mistake.
pub fn suggest_region(input: &str) -> Option<Region> {
    let upper = input.trim().to_ascii_uppercase();
    MISTAKEN_CODES
        .binary_search_by(|(mistake, _)| (*mistake).cmp(upper.as_str()))
        .ok()
        .and_then(|index| Region::parse(MISTAKEN_CODES[index].1).ok())
}

/// `: did you mean GB?` for a known mistake, else nothing.
fn did_you_mean(input: &str) -> String {
    suggest_region(input)
        .map(|region| format!(": did you mean {region}?"))
        .unwrap_or_default()
}

/// A region: an assigned ISO 3166-1 alpha-2 code, stored in canonical uppercase.
///
/// Two bytes, `Copy`, usable as a map key; construct it with [`Region::parse`] or `str::parse`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region([u8; 2]);

/// Why a string is not a [`Region`]. The message quotes the input so logs and HTTP 400 bodies
/// say exactly what was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// Not two ASCII letters at all (`../x`, `USA`, ``).
    #[error(
        "region {0:?} is not an ISO 3166-1 alpha-2 code (two letters, e.g. AE or us){hint}",
        hint = did_you_mean(.0)
    )]
    Malformed(String),
    /// Two letters, but not a code ISO 3166-1 has assigned (`ZZ`, `UK`).
    #[error(
        "region {0:?} is not an assigned ISO 3166-1 alpha-2 code{hint}",
        hint = did_you_mean(.0)
    )]
    Unassigned(String),
}

impl Region {
    /// Parses a region case-insensitively: `ae`, `Ae` and `AE` all give `AE`.
    pub fn parse(input: &str) -> Result<Self, RegionError> {
        let bytes = input.as_bytes();
        if bytes.len() != 2 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return Err(RegionError::Malformed(truncate_for_message(input)));
        }
        let code = [bytes[0].to_ascii_uppercase(), bytes[1].to_ascii_uppercase()];
        let region = Region(code);
        if ASSIGNED.binary_search(&region.as_str()).is_err() {
            return Err(RegionError::Unassigned(input.to_owned()));
        }
        Ok(region)
    }

    /// The canonical uppercase code, e.g. `"AE"`.
    pub fn as_str(&self) -> &str {
        // Construction guarantees two ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// Whether the region's main language is written right to left; the default for a
    /// notification's `rtl` flag.
    pub fn is_rtl(&self) -> bool {
        self.rtl_language().is_some()
    }

    /// The BCP 47 tag of the region's main right-to-left language (`ar`, `he`, `fa`, `ur`, `dv`),
    /// or `None` for a left-to-right region.
    pub fn rtl_language(&self) -> Option<&'static str> {
        RIGHT_TO_LEFT
            .binary_search_by(|(code, _)| (*code).cmp(self.as_str()))
            .ok()
            .map(|index| RIGHT_TO_LEFT[index].1)
    }

    /// Every assigned region, in code order.
    pub fn all() -> impl Iterator<Item = Region> {
        ASSIGNED
            .iter()
            .map(|code| Region([code.as_bytes()[0], code.as_bytes()[1]]))
    }
}

/// Keeps error messages one short line even when the input was a megabyte of garbage.
fn truncate_for_message(input: &str) -> String {
    const LIMIT: usize = 32;
    match input.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &input[..cut]),
        None => input.to_owned(),
    }
}

impl FromStr for Region {
    type Err = RegionError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Region::parse(input)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region({})", self.as_str())
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Region::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_list_is_sorted_and_complete() {
        assert_eq!(ASSIGNED.len(), 249);
        assert!(ASSIGNED.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(RIGHT_TO_LEFT.windows(2).all(|pair| pair[0].0 < pair[1].0));
        for (code, _) in RIGHT_TO_LEFT {
            assert!(Region::parse(code).is_ok(), "{code} must be assigned");
        }
    }

    #[test]
    fn parse_is_case_insensitive_and_canonical() {
        assert_eq!(Region::parse("ae").unwrap().as_str(), "AE");
        assert_eq!(Region::parse("Fi").unwrap().to_string(), "FI");
        assert_eq!(
            "us".parse::<Region>().unwrap(),
            Region::parse("US").unwrap()
        );
    }

    #[test]
    fn rejects_with_the_input_named() {
        let err = Region::parse("../x").unwrap_err();
        assert_eq!(err, RegionError::Malformed("../x".into()));
        assert!(err.to_string().contains("\"../x\""));
        assert!(matches!(
            Region::parse("ZZ"),
            Err(RegionError::Unassigned(_))
        ));
        assert!(matches!(
            Region::parse("UK"),
            Err(RegionError::Unassigned(_))
        ));
        assert!(matches!(Region::parse(""), Err(RegionError::Malformed(_))));
        assert_eq!(
            Region::parse("UK").unwrap_err().to_string(),
            "region \"UK\" is not an assigned ISO 3166-1 alpha-2 code: did you mean GB?"
        );
        assert!(Region::parse("usa")
            .unwrap_err()
            .to_string()
            .ends_with(": did you mean US?"));
        assert!(!Region::parse("ZZ")
            .unwrap_err()
            .to_string()
            .contains("mean"));
        assert!(matches!(
            Region::parse("USA"),
            Err(RegionError::Malformed(_))
        ));
        assert!(matches!(
            Region::parse("é1"),
            Err(RegionError::Malformed(_))
        ));
        let long = "x".repeat(10_000);
        assert!(Region::parse(&long).unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn right_to_left_defaults() {
        for code in [
            "AE", "IL", "SA", "EG", "IQ", "IR", "JO", "KW", "LB", "PK", "MV",
        ] {
            assert!(Region::parse(code).unwrap().is_rtl(), "{code}");
        }
        for code in ["FI", "CZ", "DK", "BE", "GB", "CH", "US", "TR", "IN"] {
            assert!(!Region::parse(code).unwrap().is_rtl(), "{code}");
        }
        assert_eq!(Region::parse("IL").unwrap().rtl_language(), Some("he"));
        assert_eq!(Region::parse("AE").unwrap().rtl_language(), Some("ar"));
    }

    #[test]
    fn seed_regions_are_valid() {
        for region in SEED_REGIONS {
            assert_eq!(Region::parse(region.as_str()).unwrap(), region);
        }
        assert_eq!(Region::all().count(), 249);
    }
}
