//! TUF 1.0: the specification's metadata format and client workflow (section 5).
//!
//! What and why: the agent must be checkable from outside. This module reads the
//! specification's JSON as received ([`metadata`]), verifies signatures over the canonical
//! JSON of the received `signed` value ([`canonical`]; unknown fields are covered), with
//! Ed25519, ECDSA P-256/P-384 and RSA-PSS keys ([`keys`]), and applies the client workflow
//! step by step ([`trusted::TrustedSet`] holds the rules, [`updater::Updater`] the order of
//! downloads, their bounds, local storage and delegation traversal). Transport and storage
//! are traits, so the same code serves the conformance client (`outpost-tuf-client`), HTTP
//! and, later, USB files. It depends on nothing in the crate but leaf modules.

pub mod canonical;
pub mod hashes;
pub mod keys;
pub mod metadata;
pub mod pattern;
pub mod sign;
pub mod trusted;
pub mod updater;

/// What kind of refusal a [`TufError`] is (machine-readable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TufErrorKind {
    /// Not the specification's JSON.
    Malformed,
    /// A document of another role.
    WrongType,
    /// Too few valid signatures.
    Threshold,
    /// A version that is not the expected one or goes back.
    Version,
    /// Expired.
    Expired,
    /// Length differs from the signed one.
    Length,
    /// A hash differs from the signed one.
    Hash,
    /// Something signed earlier is missing now, or was never listed.
    Missing,
    /// The repository could not be reached or refused.
    Fetch,
    /// Local storage failed.
    Store,
    /// Steps called out of the specification's order.
    Order,
}

/// Why metadata or a target was refused. Each says what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TufError {
    /// Not valid metadata of the role.
    #[error("{role} metadata is malformed: {reason}")]
    Malformed {
        /// Role name.
        role: String,
        /// What is wrong.
        reason: String,
    },
    /// `_type` is another role's.
    #[error("{role} metadata has _type {found:?}, expected {expected:?}")]
    WrongType {
        /// Role name.
        role: String,
        /// Expected `_type`.
        expected: String,
        /// Found `_type`.
        found: String,
    },
    /// Fewer valid signatures than the threshold.
    #[error("{role} metadata has {valid} valid signature(s) from its authorised keys; {threshold} needed")]
    Threshold {
        /// Role name.
        role: String,
        /// Distinct authorised keys whose signature verified.
        valid: u64,
        /// Required.
        threshold: u64,
    },
    /// A version that is not allowed.
    #[error("{role} version {found} refused: {rule}")]
    Version {
        /// Role name.
        role: String,
        /// Version offered.
        found: u64,
        /// The rule it breaks.
        rule: String,
    },
    /// Expired.
    #[error("{role} metadata expired at {expires}; the repository must publish fresh metadata")]
    Expired {
        /// Role name.
        role: String,
        /// Its expiry.
        expires: String,
    },
    /// Length differs.
    #[error("{what}: length {found}, signed metadata says {expected}")]
    Length {
        /// File.
        what: String,
        /// Signed length.
        expected: u64,
        /// Received length.
        found: u64,
    },
    /// Hash differs or cannot be computed.
    #[error("{what}: {reason}")]
    Hash {
        /// File.
        what: String,
        /// What differs.
        reason: String,
    },
    /// Missing.
    #[error("{0}")]
    Missing(String),
    /// Download failed.
    #[error("fetching {url}: {reason}")]
    Fetch {
        /// URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Local storage failed.
    #[error("local metadata store: {0}")]
    Store(String),
    /// Out of order.
    #[error("client workflow out of order: {0}")]
    Order(String),
}

impl TufError {
    /// Malformed metadata of `role`.
    pub fn malformed(role: &str, reason: String) -> TufError {
        TufError::Malformed {
            role: role.to_string(),
            reason,
        }
    }

    /// The kind, for callers that branch on it.
    pub fn kind(&self) -> TufErrorKind {
        match self {
            TufError::Malformed { .. } => TufErrorKind::Malformed,
            TufError::WrongType { .. } => TufErrorKind::WrongType,
            TufError::Threshold { .. } => TufErrorKind::Threshold,
            TufError::Version { .. } => TufErrorKind::Version,
            TufError::Expired { .. } => TufErrorKind::Expired,
            TufError::Length { .. } => TufErrorKind::Length,
            TufError::Hash { .. } => TufErrorKind::Hash,
            TufError::Missing(_) => TufErrorKind::Missing,
            TufError::Fetch { .. } => TufErrorKind::Fetch,
            TufError::Store(_) => TufErrorKind::Store,
            TufError::Order(_) => TufErrorKind::Order,
        }
    }

    /// Whether this is a refusal of repository content (as opposed to a transport or local
    /// failure): the client falls back from local to remote metadata on these.
    pub fn is_repository_error(&self) -> bool {
        !matches!(
            self.kind(),
            TufErrorKind::Fetch | TufErrorKind::Store | TufErrorKind::Order
        )
    }
}
