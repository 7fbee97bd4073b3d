//! Helpers to read a JSON object field by field, collecting one error per bad field.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::Errors;

pub(crate) fn path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Reports every key of `map` not in `known` as an unknown field.
pub(crate) fn reject_unknown(
    map: &Map<String, Value>,
    known: &[&str],
    prefix: &str,
    errors: &mut Errors,
) {
    for key in map.keys() {
        if !known.contains(&key.as_str()) {
            errors.push(path(prefix, key), "unknown field");
        }
    }
}

/// A JSON object read field by field; `prefix` names it in error paths (`tasks[0]`; empty for
/// a whole body).
#[derive(Clone, Copy)]
pub(crate) struct Fields<'a> {
    pub map: &'a Map<String, Value>,
    pub prefix: &'a str,
}

impl<'a> Fields<'a> {
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    /// The error path of `key` in this object.
    pub(crate) fn path(&self, key: &str) -> String {
        path(self.prefix, key)
    }

    /// Reads an optional field: absent or `null` is `None`; a value of the wrong type is an error.
    pub(crate) fn optional<T: DeserializeOwned>(
        &self,
        key: &str,
        errors: &mut Errors,
    ) -> Option<T> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => parse_value(value, &self.path(key), errors),
        }
    }

    /// Reads a required field: absent or `null` is an error too.
    pub(crate) fn required<T: DeserializeOwned>(
        &self,
        key: &str,
        errors: &mut Errors,
    ) -> Option<T> {
        if matches!(self.map.get(key), None | Some(Value::Null)) {
            errors.push(self.path(key), "is required");
        }
        self.optional(key, errors)
    }
}

pub(crate) fn parse_value<T: DeserializeOwned>(
    value: &Value,
    field: &str,
    errors: &mut Errors,
) -> Option<T> {
    match T::deserialize(value) {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(field, clean_serde_message(&e.to_string()));
            None
        }
    }
}

/// serde_json appends " at line 1 column 2" to some messages; it means nothing for a `Value`.
fn clean_serde_message(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Fields a client may send back from a GET of a stored document (a policy, a config level):
/// read-only, accepted and ignored on input.
pub(crate) const READ_ONLY_FIELDS: &[&str] = &["version", "updatedAt", "updatedBy"];

/// The request schema of a stored document that may be sent back: its own fields, then the
/// [`READ_ONLY_FIELDS`] (the parsers accept and ignore the same list).
#[cfg(feature = "openapi")]
macro_rules! document_input_schema {
    ($(#[$meta:meta])* $name:ident { $($fields:tt)* }) => {
        #[derive(utoipa::ToSchema)]
        $(#[$meta])*
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        #[allow(dead_code)] // A schema: `from_json` parses the document.
        pub struct $name {
            $($fields)*
            /// Read-only: accepted and ignored.
            version: Option<u64>,
            /// Read-only: accepted and ignored.
            updated_at: Option<String>,
            /// Read-only: accepted and ignored.
            updated_by: Option<String>,
        }
    };
}
#[cfg(feature = "openapi")]
pub(crate) use document_input_schema;

/// A request body that must be a JSON object with only the `known` fields: the object and the
/// errors found so far (one per unknown field), or the error when it is not an object.
pub(crate) fn body_object<'a>(
    body: &'a Value,
    known: &[&str],
) -> Result<(Fields<'a>, Errors), crate::InputError> {
    let mut errors = Errors::default();
    let Some(map) = as_object(body, "", &mut errors) else {
        return Err(errors.into_error());
    };
    reject_unknown(map, known, "", &mut errors);
    Ok((Fields { map, prefix: "" }, errors))
}

/// [`body_object`] for a stored document sent back: its [`READ_ONLY_FIELDS`] are accepted too.
pub(crate) fn document_object<'a>(
    body: &'a Value,
    known: &[&str],
) -> Result<(Fields<'a>, Errors), crate::InputError> {
    let known: Vec<&str> = known.iter().chain(READ_ONLY_FIELDS).copied().collect();
    body_object(body, &known)
}

pub(crate) fn as_object<'a>(
    value: &'a Value,
    field: &str,
    errors: &mut Errors,
) -> Option<&'a Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        _ => {
            errors.push(
                if field.is_empty() { "$" } else { field },
                "must be a JSON object",
            );
            None
        }
    }
}

pub(crate) fn char_len_between(s: &str, min: usize, max: usize) -> bool {
    let n = s.chars().count();
    n >= min && n <= max
}

/// DESIGN.md 6.1: strings never carry U+0000 (PostgreSQL cannot store it, and no client means
/// it). Every string and key of a body is checked, whatever the endpoint; each offending field
/// is named (`metadata.note`, `tasks[0].model`).
pub fn reject_nul_characters(value: &Value) -> Result<(), crate::InputError> {
    fn walk(value: &Value, at: &str, errors: &mut Errors) {
        match value {
            Value::String(s) if s.contains('\0') => errors.push(
                if at.is_empty() { "$" } else { at },
                "must not contain U+0000",
            ),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{at}[{i}]"), errors);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    let field = path(at, key);
                    if key.contains('\0') {
                        errors.push(field.replace('\0', "\\u0000"), "must not contain U+0000");
                    } else {
                        walk(item, &field, errors);
                    }
                }
            }
            _ => {}
        }
    }
    let mut errors = Errors::default();
    walk(value, "", &mut errors);
    errors.check()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::InputError;

    #[test]
    fn nul_characters_are_refused_by_field() {
        assert!(reject_nul_characters(&json!({"title": "fine", "n": 1})).is_ok());
        let Err(InputError::Invalid(errors)) = reject_nul_characters(&json!({
            "title": "a\u{0}b",
            "metadata": {"note": "x\u{0}", "ok": "y"},
            "tasks": [{"model": "fine"}, {"model": "\u{0}"}],
            "k\u{0}": 1
        })) else {
            panic!("refused");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for field in ["title", "metadata.note", "tasks[1].model", "k\\u0000"] {
            assert!(fields.contains(&field), "{field} in {fields:?}");
        }
        assert_eq!(fields.len(), 4);
    }
}
