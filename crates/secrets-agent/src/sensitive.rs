//! Types that hold secret values: never printed (their `Debug` says only how big they are),
//! and zeroed when dropped, with the `zeroize` crate.
//!
//! Where the zeroing stops: reqwest and hyper buffer requests (a login's secret_id or JWT) and
//! responses on their way through, and the template engine keeps its own copies of the values
//! while it renders; none of those is zeroed. Everything the agent itself keeps between refreshes (the token, each secret's data,
//! the rendered files) is.

use std::fmt;

use serde_json::Value;
use zeroize::{Zeroize, Zeroizing};

/// A token or other credential string.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Bytes of a file's content or a response body.
pub type SecretBytes = Zeroizing<Vec<u8>>;

/// A secret's data: a JSON object (a KV entry, a lease's credentials, a certificate and key).
/// Every string in it is zeroed on drop.
#[derive(Clone, PartialEq)]
pub struct SecretData(Value);

impl SecretData {
    pub fn new(value: Value) -> Self {
        Self(value)
    }

    pub fn value(&self) -> &Value {
        &self.0
    }

    /// The value of one top-level field.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Value::Object(map) => {
                let keys: Vec<&String> = map.keys().collect();
                write!(f, "SecretData(keys: {keys:?})")
            }
            _ => f.write_str("SecretData(..)"),
        }
    }
}

impl Drop for SecretData {
    fn drop(&mut self) {
        zeroize_value(&mut self.0);
    }
}

/// Zeroes every string in a JSON value (keys are names, not secrets, and stay).
pub fn zeroize_value(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(zeroize_value),
        Value::Object(map) => map.values_mut().for_each(zeroize_value),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Parses a response body as JSON; the body's bytes are zeroed afterwards by their owner.
pub fn parse_json(body: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_values() {
        let token = Secret::new("s.hunter2".into());
        assert!(!format!("{token:?}").contains("hunter2"));
        let data = SecretData::new(serde_json::json!({"password": "hunter2", "n": 1}));
        let shown = format!("{data:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password"), "{shown}");
    }

    #[test]
    fn zeroize_walks_the_whole_value() {
        let mut v = serde_json::json!({"a": "xyz", "b": ["pq", {"c": "rs"}], "d": 5});
        zeroize_value(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"a": "", "b": ["", {"c": ""}], "d": 5})
        );
    }
}
