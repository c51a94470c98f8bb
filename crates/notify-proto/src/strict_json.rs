//! JSON text that means one thing to every reader: parsing that refuses duplicate object keys.
//!
//! RFC 8259 leaves `{"region":"AE","region":"FI"}` to the reader: serde_json keeps the last
//! value, other parsers keep the first or fail. A payload that one component reads as AE and
//! another as FI must not be delivered at all, so the contract parses JSON with
//! [`parse_value`], which builds the same [`Value`] as `serde_json::from_str` in the same single
//! pass, but stops at the first key an object repeats (at any depth) and names it.
//!
//! Depth stays bounded by serde_json's own recursion limit (128 levels), which fails the parse
//! before this module's recursion could grow the stack.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Why a text is not strict JSON.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StrictJsonError {
    /// Not JSON at all (syntax, end of input, numbers out of range, nesting over 128 levels).
    #[error("{0}")]
    Syntax(String),
    /// An object names the same key twice.
    #[error("key {0:?} appears twice in one object")]
    DuplicateKey(String),
}

/// Parses `text` as one JSON value, refusing any object that repeats a key.
pub fn parse_value(text: &str) -> Result<Value, StrictJsonError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = StrictValue {
        duplicate: &duplicate,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value));
    match (parsed, duplicate.into_inner()) {
        (_, Some(key)) => Err(StrictJsonError::DuplicateKey(key)),
        (Ok(value), None) => Ok(value),
        (Err(error), None) => Err(StrictJsonError::Syntax(error.to_string())),
    }
}

/// A seed for one JSON value; it records the first duplicate key it meets in `duplicate` (the
/// serde error itself can only carry a string).
#[derive(Clone, Copy)]
struct StrictValue<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // serde_json never hands a visitor a non-finite float; Null is what it would build too.
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match object.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(self)?);
                }
                Entry::Occupied(taken) => {
                    let key = taken.key().clone();
                    let message = format!("duplicate key {key:?}");
                    *self.duplicate.borrow_mut() = Some(key);
                    return Err(de::Error::custom(message));
                }
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_what_serde_json_builds() {
        let text = r#"{"b":[1,-2,3.5,1e300,18446744073709551615,"ä",null,true,{}],"a":{"x":"y"}}"#;
        let strict = parse_value(text).unwrap();
        let loose: Value = serde_json::from_str(text).unwrap();
        assert_eq!(strict, loose);
        assert_eq!(strict.to_string(), loose.to_string());
    }

    #[test]
    fn a_repeated_key_is_refused_at_any_depth() {
        assert_eq!(
            parse_value(r#"{"region":"AE","title":"t","region":"FI"}"#),
            Err(StrictJsonError::DuplicateKey("region".into()))
        );
        assert_eq!(
            parse_value(r#"{"extra":[{"k":1,"k":2}]}"#),
            Err(StrictJsonError::DuplicateKey("k".into()))
        );
        // Escapes are decoded before comparing: "\u0072egion" is "region".
        assert_eq!(
            parse_value(r#"{"region":"AE","\u0072egion":"FI"}"#),
            Err(StrictJsonError::DuplicateKey("region".into()))
        );
        // The same key in two different objects is fine.
        assert!(parse_value(r#"{"a":{"k":1},"b":{"k":2}}"#).is_ok());
    }

    #[test]
    fn syntax_errors_stay_syntax_errors() {
        for text in ["", "{", r#"{"a":1}x"#, "[1,]", "1e400", "\"\\ud800\""] {
            assert!(
                matches!(parse_value(text), Err(StrictJsonError::Syntax(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn nesting_is_bounded_by_the_recursion_limit() {
        let deep = |levels: usize| "[".repeat(levels) + &"]".repeat(levels);
        assert!(parse_value(&deep(100)).is_ok());
        let error = parse_value(&deep(100_000)).unwrap_err();
        assert!(error.to_string().contains("recursion limit"), "{error}");
    }
}
