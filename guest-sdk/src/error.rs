//! Per-record failures.

/// Why a record failed. It becomes a `fail` outcome: the record goes to the
/// dead-letter queue with this kind and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: String,
    message: String,
}

impl Error {
    /// An error of any kind (kebab-case, e.g. `out-of-range`).
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            kind: kind.into(),
            message: message.into(),
        }
    }

    /// The record is malformed (not JSON, wrong type, ...).
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new("invalid-input", message)
    }

    /// A field the transform needs is missing; names the field.
    pub fn missing_field(field: impl std::fmt::Display) -> Self {
        Self::new("missing-field", format!("field `{field}` is missing"))
    }

    /// A reference-data lookup found nothing or failed.
    pub fn lookup_failed(message: impl Into<String>) -> Self {
        Self::new("lookup-failed", message)
    }

    /// A bug or an impossible state in the transform.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("internal", message)
    }

    /// The error class.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::invalid_input(format!("JSON error: {e}"))
    }
}
