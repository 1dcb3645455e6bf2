//! The JWT metric families: refusals by reason, JWKS fetches by result, keys held.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::verify::Refusal;

#[derive(Debug, Clone)]
pub struct JwtMetrics {
    refusals: IntCounterVec,
    refreshes: IntCounterVec,
    keys: IntGaugeVec,
}

impl JwtMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let refusals = IntCounterVec::new(
            Opts::new(
                "ambassador_jwt_refusals_total",
                "Inbound requests refused by JWT authentication, by route and reason.",
            ),
            &["route", "reason"],
        )?;
        let refreshes = IntCounterVec::new(
            Opts::new(
                "ambassador_jwt_jwks_refreshes_total",
                "JWKS loads by route and result (ok, error).",
            ),
            &["route", "result"],
        )?;
        let keys = IntGaugeVec::new(
            Opts::new(
                "ambassador_jwt_jwks_keys",
                "Verification keys in the route's current JWKS (0: none loaded yet).",
            ),
            &["route"],
        )?;
        registry.register(Box::new(refusals.clone()))?;
        registry.register(Box::new(refreshes.clone()))?;
        registry.register(Box::new(keys.clone()))?;
        Ok(Self {
            refusals,
            refreshes,
            keys,
        })
    }

    /// Makes the route's series visible at 0.
    pub fn route(&self, route: &str) {
        self.keys.with_label_values(&[route]).set(0);
        for result in ["ok", "error"] {
            self.refreshes.with_label_values(&[route, result]);
        }
    }

    pub fn refused(&self, route: &str, reason: Refusal) {
        self.refusals
            .with_label_values(&[route, reason.as_str()])
            .inc();
    }

    pub fn refreshed(&self, route: &str, ok: bool, keys: usize) {
        self.refreshes
            .with_label_values(&[route, if ok { "ok" } else { "error" }])
            .inc();
        if ok {
            self.keys
                .with_label_values(&[route])
                .set(i64::try_from(keys).unwrap_or(i64::MAX));
        }
    }
}
