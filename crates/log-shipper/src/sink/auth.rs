//! How a store wants the token of `token_file` presented: the `Authorization` header of the
//! HTTP store sinks.

use base64::Engine;

/// The `Authorization` scheme for the token read from the sink's token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Bearer <token>` (Loki behind a gateway, OpenSearch with JWT).
    Bearer,
    /// `Basic base64(user:token)`: the file holds the password.
    Basic { user: String },
    /// `ApiKey <token>`: Elasticsearch's API key, the file holding its `encoded` form.
    ApiKey,
    /// `Splunk <token>`: an HTTP Event Collector token.
    Splunk,
}

impl Auth {
    /// The header value for `token`.
    pub fn header(&self, token: &str) -> String {
        match self {
            Auth::Bearer => format!("Bearer {token}"),
            Auth::Basic { user } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
            ),
            Auth::ApiKey => format!("ApiKey {token}"),
            Auth::Splunk => format!("Splunk {token}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(Auth::Bearer.header("t"), "Bearer t");
        assert_eq!(Auth::ApiKey.header("a2V5"), "ApiKey a2V5");
        assert_eq!(Auth::Splunk.header("guid"), "Splunk guid");
        // RFC 7617's example.
        let basic = Auth::Basic {
            user: "Aladdin".into(),
        };
        assert_eq!(
            basic.header("open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
