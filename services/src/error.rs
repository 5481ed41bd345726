//! The services' errors, typed: what the host logs, what a stanza error's
//! text says.

/// Why an entry cannot be kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// Its shard would be over the record limit even at the deepest split.
    #[error("the entry does not fit its shard's record ({limit} bytes)")]
    Full {
        /// The per-record limit.
        limit: usize,
    },
    /// A stored shard does not parse.
    #[error("stored shard {name} is unreadable: {why}")]
    Unreadable {
        /// The record's name.
        name: String,
        /// The parser's complaint.
        why: String,
    },
}

/// Stored state that cannot be read back (the stanzas waiting for it are
/// answered `internal-server-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A record does not parse.
    #[error("stored state of {entity} is unreadable: {why}")]
    Unreadable {
        /// The room, node or registry.
        entity: String,
        /// The parser's complaint.
        why: String,
    },
    /// A shard does not parse.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// A record name no service owns.
    #[error("unknown service entity {0}")]
    UnknownEntity(String),
}

impl StateError {
    /// `entity`'s record did not parse.
    pub fn unreadable(entity: &str, why: impl std::fmt::Display) -> StateError {
        StateError::Unreadable {
            entity: entity.to_string(),
            why: why.to_string(),
        }
    }
}

/// A submitted configuration form that cannot be applied (answered
/// `bad-request` or `not-acceptable` with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// Not a data form.
    #[error("invalid data form: {0}")]
    Invalid(String),
    /// A form, a result: only submit and cancel answer a configuration.
    #[error("the form must be of type submit or cancel")]
    WrongType,
    /// A boolean field with another value.
    #[error("{var}: '{value}' is not a boolean")]
    NotBoolean {
        /// The field.
        var: String,
        /// Its value.
        value: String,
    },
    /// A number out of range or not a number.
    #[error("{var}: '{value}' is not a number up to {max}")]
    NotNumber {
        /// The field.
        var: String,
        /// Its value.
        value: String,
        /// The largest allowed.
        max: usize,
    },
    /// A text longer than allowed.
    #[error("{var}: at most {max} bytes")]
    TooLong {
        /// The field.
        var: String,
        /// The limit.
        max: usize,
    },
    /// A list field with a value that is not among its options.
    #[error("{var}: '{value}' is not supported")]
    Unsupported {
        /// The field.
        var: String,
        /// Its value.
        value: String,
    },
    /// Values that do not go together.
    #[error("{0}")]
    Inconsistent(&'static str),
}

/// Why a service's registry refused a room or node (quotas). The text
/// travels to the room's or node's host inside the ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The registry's record is not loaded here.
    #[error("the registry is not available")]
    Unavailable,
    /// The owner has as many as allowed.
    #[error("{owner} owns {owned} of the {allowed} allowed on {service}")]
    OwnerQuota {
        /// Who asked.
        owner: String,
        /// How many they own.
        owned: usize,
        /// The quota.
        allowed: usize,
        /// The service.
        service: String,
    },
    /// The service has as many as allowed.
    #[error("{service} holds its maximum of {total}")]
    ServiceFull {
        /// The service.
        service: String,
        /// The quota.
        total: usize,
    },
    /// The registry's shard would not fit its record.
    #[error("{0}'s registry is full (record_max_bytes)")]
    RecordFull(String),
    /// A refusal read from another node's answer.
    #[error("{0}")]
    Remote(String),
}
