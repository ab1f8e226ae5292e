//! What the supervisor answers when it cannot do what was asked. A domain error: the
//! API alone turns it into an HTTP status (`impl From<AppError> for ApiError`).

/// Why an operation on apps, pods, containers or objects failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// What was named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request (or the image it names) is not acceptable; `code` says how.
    #[error("{message}")]
    Invalid {
        /// Stable snake_case: `invalid_wasm`, `unsupported_image`, `invalid_manifest`...
        code: &'static str,
        /// What was wrong, naming it.
        message: String,
    },
    /// It conflicts with what exists (a name taken, a port published).
    #[error("{0}")]
    Conflict(String),
    /// The node has no room for it (its memory budget).
    #[error("{0}")]
    OverBudget(String),
    /// The node's disk is too full to take it: refused before anything was written.
    #[error("{0}")]
    DiskFull(String),
    /// It was done, but what it started did not become ready in time.
    #[error("{0}")]
    NotReady(String),
    /// The cluster cannot take the change now (no quorum, no leader); `code` says which.
    #[error("{message}")]
    Unavailable {
        /// `no_quorum`, `no_leader`, `outcome_unknown` (a write that may or may not be
        /// applied), `consensus_failed`.
        code: &'static str,
        /// What is missing, naming the voters.
        message: String,
    },
    /// Something on the node failed (I/O, a task); the detail is for the log.
    #[error("{0}")]
    Internal(String),
}

impl From<crate::raft::ConsensusError> for AppError {
    fn from(e: crate::raft::ConsensusError) -> Self {
        use crate::raft::ConsensusError as E;
        let code = match &e {
            E::DiskFull(message) => return AppError::DiskFull(message.clone()),
            E::NoQuorum { .. } => "no_quorum",
            E::NoLeader(_) | E::Leader { .. } | E::Refused | E::NotLeader => "no_leader",
            E::Timeout(_) | E::Unknown(_) => "outcome_unknown",
            E::Fatal(_) => "consensus_failed",
        };
        AppError::Unavailable {
            code,
            message: e.to_string(),
        }
    }
}

impl AppError {
    /// [`AppError::Invalid`].
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        AppError::Invalid {
            code,
            message: message.into(),
        }
    }

    /// [`AppError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        AppError::NotFound(message.into())
    }

    /// [`AppError::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        AppError::Conflict(message.into())
    }

    /// [`AppError::OverBudget`].
    pub fn over_budget(err: impl std::fmt::Display) -> Self {
        AppError::OverBudget(err.to_string())
    }

    /// An image store's failure: a full disk as [`AppError::DiskFull`], anything
    /// else as [`AppError::Internal`].
    pub fn image(e: skiff_image::ImageError) -> Self {
        if e.is_disk_full() {
            AppError::DiskFull(e.to_string())
        } else {
            AppError::Internal(e.to_string())
        }
    }

    /// [`AppError::Internal`].
    pub fn internal(err: impl std::fmt::Display) -> Self {
        AppError::Internal(err.to_string())
    }

    /// A stable code for it.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::NotFound(_) => "not_found",
            AppError::Invalid { code, .. } => code,
            AppError::Conflict(_) => "conflict",
            AppError::OverBudget(_) => "over_budget",
            AppError::DiskFull(_) => "insufficient_storage",
            AppError::NotReady(_) => "not_ready",
            AppError::Unavailable { code, .. } => code,
            AppError::Internal(_) => "internal",
        }
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        match self {
            AppError::NotFound(m)
            | AppError::Conflict(m)
            | AppError::OverBudget(m)
            | AppError::DiskFull(m)
            | AppError::NotReady(m)
            | AppError::Internal(m) => m,
            AppError::Invalid { message, .. } | AppError::Unavailable { message, .. } => message,
        }
    }
}
