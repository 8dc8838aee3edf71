//! The cluster secret a node proves itself with, and during a rotation the others it still
//! accepts from peers. Both the replication handshake and the strong tier's calls use them: a
//! node always proves with `current`, and accepts a peer's proof made with any of them, so a
//! cluster moves from one secret to the next one node at a time with every link up.
//!
//! Not here: where the secrets come from (the config loader) or when they change (the server's
//! config follower swaps them whole; a handshake or a call uses one snapshot).

#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    /// What this node proves with.
    pub current: String,
    /// Also accepted from peers (`accept_secrets:`): the old secret during a rotation, or the
    /// new one before the nodes switch to it.
    pub accepted: Vec<String>,
}

/// Never print a secret.
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").field("accepted", &self.accepted.len()).finish_non_exhaustive()
    }
}

impl Secrets {
    pub fn one(current: impl Into<String>) -> Self {
        Self { current: current.into(), accepted: Vec::new() }
    }

    /// Every secret a peer's proof may be made with, `current` first.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.current.as_str()).chain(self.accepted.iter().map(String::as_str))
    }
}

/// The secrets in use, replaced whole while the node runs.
pub type LiveSecrets = mrr_core::live::Live<Secrets>;
