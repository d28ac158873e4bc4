use thiserror::Error;

/// Why a user-supplied value was refused. Each variant names the field and the value.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ModelError {
    #[error(
        "invalid {what} name {value:?}: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
    )]
    InvalidName { what: &'static str, value: String },
    #[error("invalid duration {value:?} for {field}: {reason}")]
    InvalidDuration {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid {field}: {reason}")]
    OutOfRange { field: &'static str, reason: String },
    #[error("invalid environment variable {value:?}: {reason}")]
    InvalidEnvVar { value: String, reason: String },
    #[error("invalid route path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("invalid route host {host:?}: {reason}")]
    InvalidHost { host: String, reason: String },
    #[error("invalid HTTP method {value:?}")]
    InvalidMethod { value: String },
    #[error("invalid outbound origin {value:?}: {reason}")]
    InvalidOutbound { value: String, reason: String },
    #[error("invalid environment command: {reason}")]
    InvalidCommand { reason: String },
    #[error("invalid schedule {value:?}: {reason}")]
    InvalidSchedule { value: String, reason: String },
    #[error("unknown time zone {value:?} (use an IANA name such as Europe/Paris)")]
    InvalidTimeZone { value: String },
}
