//! Why a spec is refused.

/// A spec field out of range or a name that is not known, with a user-facing message (the
/// engine's `Error` carries it on with the same words).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid sampling parameter: {0}")]
    Sampling(String),
    /// A strategy's settings (its name, parameters, budget, reward or extraction).
    #[error("strategy settings: {0}")]
    Strategy(String),
}

/// A spec result.
pub type Result<T> = std::result::Result<T, SpecError>;
