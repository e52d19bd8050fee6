//! JSON from outside names each key of an object once.
//!
//! serde refuses a struct's field given twice, but a map or a `Value` keeps the last: an
//! event's `data` or a platform's delivery with `"quantity": 1000001, "quantity": 1` was read as
//! quantity 1 here, and any reader that keeps the first would see another event. Such a text is
//! refused whole, at the edge.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};

/// `Err` with the first key named twice in one object (or why the text is not JSON).
pub fn once_each(body: &[u8]) -> Result<(), String> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    Checked
        .deserialize(&mut reader)
        .map_err(|e| e.to_string())?;
    reader.end().map_err(|e| e.to_string())
}

struct Checked;

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, reader: D) -> Result<(), D::Error> {
        reader.deserialize_any(Checked)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        while items.next_element_seed(Checked)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = entries.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(A::Error::custom(format!(
                    "the key {key:?} is given twice in one object"
                )));
            }
            entries.next_value_seed(Checked)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::once_each;

    #[test]
    fn a_key_given_twice_at_any_depth_is_named() {
        // GIVEN texts whose objects name a key twice, at the top, inside, inside a list
        for text in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"data": {"lines": [{"quantity": 1000001, "quantity": 1}]}}"#,
            r#"[{"id": 1}, {"id": 2, "x": {"id": 3, "id": 4}}]"#,
        ] {
            // WHEN checked THEN refused, naming the key
            let refused = once_each(text.as_bytes()).unwrap_err();
            assert!(refused.contains("given twice"), "{text}: {refused}");
        }
        // AND the same key in different objects, escapes and every kind of value pass
        let fine = r#"{"a": {"id": 1}, "b": {"id": 1}, "c": [1, -2, 3.5, "\u00e9", true, null]}"#;
        assert_eq!(once_each(fine.as_bytes()), Ok(()));
        // AND a key written with an escape is the same key
        assert!(once_each(br#"{"id": 1, "\u0069d": 2}"#).is_err());
    }
}
