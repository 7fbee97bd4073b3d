//! Validation errors: one entry per bad field, so a client can fix everything in one go.

use serde::Serialize;

/// One bad field in an input document. `field` is a JSON path such as `tasks[2].model`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why an input document was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// One or more fields are missing, unknown or out of range (HTTP 422).
    #[error("validation failed: {}", summarize(.0))]
    Invalid(Vec<FieldError>),
    /// A size limit was exceeded (HTTP 413).
    #[error("{field} exceeds {limit} bytes")]
    TooLarge { field: String, limit: usize },
}

impl InputError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }

    /// The field errors, empty for a size error.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Self::Invalid(errors) => errors,
            Self::TooLarge { .. } => &[],
        }
    }
}

fn summarize(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects field errors; turns into `Err` only when something was wrong.
#[derive(Default, Debug)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// `Err` with every collected error, `Ok` when there is none.
    pub fn check(self) -> Result<(), InputError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(InputError::Invalid(self.0))
        }
    }

    pub fn into_error(self) -> InputError {
        InputError::Invalid(self.0)
    }
}
