use copilot_domain::InputError;

pub type StoreResult<T> = Result<T, StoreError>;

/// `expected` must equal the stored version when given.
pub(crate) fn check_expected(current: Option<u64>, expected: Option<u64>) -> StoreResult<()> {
    match expected {
        Some(e) if current != Some(e) => Err(StoreError::VersionConflict { current }),
        _ => Ok(()),
    }
}

/// What a store can answer besides success. Callers match on variants, never on text.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row (policy, config level, conversation, message, membership) does not exist.
    #[error("not found")]
    NotFound,
    /// An expected version was given and the stored one differs (`None`: nothing stored).
    #[error("version conflict (current version: {current:?})")]
    VersionConflict { current: Option<u64> },
    /// The write was refused by domain validation.
    #[error(transparent)]
    Invalid(#[from] InputError),
    /// Appends and message deletes are refused while a conversation is archived.
    #[error("conversation is archived")]
    ConversationArchived,
    /// The database cannot be reached or did not answer in time; nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (a bug, or data the store cannot decode).
    #[error("store error: {0}")]
    Internal(String),
}

impl StoreError {
    pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> Self {
        Self::Internal(format!("cannot decode stored {what}: {detail}"))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(e.to_string()),
            sqlx::Error::Database(db) if is_transient_code(db.code().as_deref()) => {
                Self::Unavailable(e.to_string())
            }
            // PostgreSQL cannot store U+0000 in text or jsonb: the input is invalid, not the
            // store broken (the HTTP layer refuses it earlier, naming the field).
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("22021" | "22P05")) =>
            {
                Self::Invalid(InputError::field("$", "must not contain U+0000"))
            }
            _ => Self::Internal(e.to_string()),
        }
    }
}

/// SQLite busy/locked, and PostgreSQL connection, shutdown and serialization classes.
fn is_transient_code(code: Option<&str>) -> bool {
    match code {
        Some(c) => {
            matches!(c, "5" | "6" | "261" | "517" | "262")
                || c.starts_with("08")
                || c.starts_with("57P")
                || c == "40001"
                || c == "40P01"
        }
        None => false,
    }
}
