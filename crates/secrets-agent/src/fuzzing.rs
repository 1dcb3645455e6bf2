//! Entry points for the fuzz targets (`fuzz/`) into parsers that are private to the crate: not
//! part of the API, no stability promised.

use std::collections::BTreeMap;

use crate::render::{Content, FileSpec, Renderer};
use crate::sensitive::SecretData;

/// Compiles `template` as a file's template and renders it with one secret, `db`, holding
/// `data` (JSON, or the text as a string).
pub fn render_template(template: &str, data: &str) {
    let files = vec![FileSpec {
        path: "out".into(),
        content: Content::Template,
        mode: 0o600,
        owner: None,
        group: None,
    }];
    let Ok(renderer) = Renderer::new(files, vec![("out".to_owned(), template.to_owned())]) else {
        return;
    };
    let value =
        serde_json::from_str(data).unwrap_or_else(|_| serde_json::Value::String(data.to_owned()));
    let secret = SecretData::new(value);
    let secrets = BTreeMap::from([("db".to_owned(), &secret)]);
    let _ = renderer.render(&secrets);
}
