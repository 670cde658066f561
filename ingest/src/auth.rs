//! Which trusted application a request comes from. Keys are configured as SHA-256 hashes, so the
//! configuration never holds a usable key.

use std::collections::HashMap;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use crate::config::Application;

#[derive(Debug, thiserror::Error)]
pub enum ApplicationsError {
    #[error("application {id}: key_sha256 must be 64 hex digits")]
    BadHash { id: String },
    #[error("applications {first} and {second} share one API key")]
    SharedKey { first: String, second: String },
}

/// API key hashes and the application each belongs to.
#[derive(Debug, Clone)]
pub struct Applications {
    by_key_hash: HashMap<[u8; 32], String>,
}

impl Applications {
    pub fn new(applications: &[Application]) -> Result<Self, ApplicationsError> {
        let mut by_key_hash = HashMap::new();
        for application in applications {
            let hash = hex::decode(&application.key_sha256)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| ApplicationsError::BadHash {
                    id: application.id.clone(),
                })?;
            if let Some(first) = by_key_hash.insert(hash, application.id.clone()) {
                return Err(ApplicationsError::SharedKey {
                    first,
                    second: application.id.clone(),
                });
            }
        }
        Ok(Self { by_key_hash })
    }

    /// The application whose key the request carries, from `Authorization: Bearer <key>` or,
    /// for `navigator.sendBeacon` which cannot set headers, the `api_key` query parameter.
    pub fn authenticate(&self, headers: &HeaderMap, query_key: Option<&str>) -> Option<&str> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let key = bearer.or(query_key)?.trim();
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_key_hash.get(&hash).map(String::as_str)
    }
}

/// The hex SHA-256 of an API key, as `key_sha256` in the configuration expects it.
pub fn key_sha256(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn applications() -> Applications {
        Applications::new(&[
            Application {
                id: "shop".into(),
                key_sha256: key_sha256("shop-key"),
                ..Application::default()
            },
            Application {
                id: "blog".into(),
                key_sha256: key_sha256("blog-key"),
                ..Application::default()
            },
        ])
        .unwrap()
    }

    fn bearer(key: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        headers
    }

    #[test]
    fn bearer_key_selects_its_application() {
        let apps = applications();
        assert_eq!(apps.authenticate(&bearer("shop-key"), None), Some("shop"));
        assert_eq!(apps.authenticate(&bearer("blog-key"), None), Some("blog"));
    }

    #[test]
    fn unknown_or_missing_key_is_rejected() {
        let apps = applications();
        assert_eq!(apps.authenticate(&bearer("nope"), None), None);
        assert_eq!(apps.authenticate(&HeaderMap::new(), None), None);
    }

    #[test]
    fn query_key_serves_beacons() {
        assert_eq!(
            applications().authenticate(&HeaderMap::new(), Some("blog-key")),
            Some("blog")
        );
    }

    #[test]
    fn malformed_hash_is_a_config_error() {
        let bad = [Application {
            id: "x".into(),
            key_sha256: "abc".into(),
            ..Application::default()
        }];
        assert!(matches!(
            Applications::new(&bad),
            Err(ApplicationsError::BadHash { .. })
        ));
    }
}
