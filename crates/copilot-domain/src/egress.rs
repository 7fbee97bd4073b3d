//! Egress modes and their strictness order (DESIGN.md 3.2, 3.3 rule 7).

use serde::{Deserialize, Serialize};

/// How strictly outbound data is guarded. Ordered by strictness: `Off < Audit < Enforce`.
///
/// `report-only` is accepted on input as a synonym of `audit` (older clients send it); output
/// is always `audit` (DESIGN.md section 9, item 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    Off,
    #[serde(alias = "report-only")]
    Audit,
    Enforce,
}

impl EgressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Audit => "audit",
            Self::Enforce => "enforce",
        }
    }

    /// Parses the wire form, accepting the legacy `report-only`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Self::Off),
            "audit" | "report-only" => Some(Self::Audit),
            "enforce" => Some(Self::Enforce),
            _ => None,
        }
    }
}

/// An egress mode as accepted on input (`report-only` is the legacy name of `audit`).
// The spellings `EgressMode::parse` and `EgressMode`'s `Deserialize` accept, for request schemas.
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EgressModeInput {
    Off,
    Audit,
    #[serde(rename = "report-only")]
    ReportOnly,
    Enforce,
}

impl std::fmt::Display for EgressMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictness_order() {
        assert!(EgressMode::Off < EgressMode::Audit);
        assert!(EgressMode::Audit < EgressMode::Enforce);
    }

    /// DESIGN.md section 9, item 7: the code said `report-only`, the database `audit`.
    #[test]
    fn regression_07_egress_enum_report_only_is_audit() {
        let mode: EgressMode = serde_json::from_str("\"report-only\"").unwrap();
        assert_eq!(mode, EgressMode::Audit);
        assert_eq!(serde_json::to_string(&mode).unwrap(), "\"audit\"");
        assert_eq!(EgressMode::parse("report-only"), Some(EgressMode::Audit));
        assert!(serde_json::from_str::<EgressMode>("\"REPORT\"").is_err());
    }
}
