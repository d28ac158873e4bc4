//! The operator's price sheet (`gust up --prices FILE`), which turns usage into cost.

use std::path::Path;

use gust_model::UsageTotals;
use serde::{Deserialize, Serialize};

/// Prices per unit of usage, in one currency. Without a sheet everything costs 0.
///
/// AWS Lambda's public x86 prices as a sheet:
/// `{"currency": "USD", "per_gb_second": 0.0000166667, "per_million_requests": 0.20}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSheet {
    #[serde(default)]
    pub currency: String,
    #[serde(default)]
    pub per_gb_second: f64,
    #[serde(default)]
    pub per_cpu_ms: f64,
    #[serde(default)]
    pub per_million_requests: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum PriceSheetError {
    #[error("cannot read the price sheet {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid price sheet {path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl PriceSheet {
    pub fn load(path: &Path) -> Result<Self, PriceSheetError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PriceSheetError::Read {
            path: shown.clone(),
            source,
        })?;
        let sheet: PriceSheet =
            serde_json::from_str(&text).map_err(|e| PriceSheetError::Invalid {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        for (name, price) in [
            ("per_gb_second", sheet.per_gb_second),
            ("per_cpu_ms", sheet.per_cpu_ms),
            ("per_million_requests", sheet.per_million_requests),
        ] {
            if !price.is_finite() || price < 0.0 {
                return Err(PriceSheetError::Invalid {
                    path: shown,
                    reason: format!("{name} must be a number of zero or more, not {price}"),
                });
            }
        }
        Ok(sheet)
    }

    pub fn cost(&self, totals: &UsageTotals) -> f64 {
        totals.gb_seconds * self.per_gb_second
            + totals.cpu_ms * self.per_cpu_ms
            + totals.invocations as f64 / 1e6 * self.per_million_requests
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_prices_give_lambda_costs() {
        let sheet = PriceSheet {
            currency: "USD".into(),
            per_gb_second: 0.0000166667,
            per_cpu_ms: 0.0,
            per_million_requests: 0.20,
        };
        // One million 128 MB invocations of 100 ms: 12,500 GB-s.
        let totals = UsageTotals {
            invocations: 1_000_000,
            gb_seconds: 12_500.0,
            ..Default::default()
        };
        let cost = sheet.cost(&totals);
        assert!(
            (cost - (12_500.0 * 0.0000166667 + 0.20)).abs() < 1e-9,
            "{cost}"
        );
    }

    #[test]
    fn bad_sheets_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.json");
        for (text, expected) in [
            (r#"{"per_gb_second": -1}"#, "per_gb_second"),
            (r#"{"per_request": 1}"#, "unknown field"),
            ("not json", "expected"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = PriceSheet::load(&path).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
