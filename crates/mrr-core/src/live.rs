//! A value a running node replaces whole (API keys, cluster secrets): readers take one snapshot
//! and use it from start to end, a writer swaps in the next.
//!
//! Not here: where the values come from or when they change (the server's config follower).

use std::sync::{Arc, PoisonError, RwLock};

#[derive(Debug)]
pub struct Live<T> {
    current: RwLock<Arc<T>>,
}

impl<T: PartialEq> Live<T> {
    pub fn new(value: T) -> Self {
        Self { current: RwLock::new(Arc::new(value)) }
    }

    pub fn current(&self) -> Arc<T> {
        // A writer panicking mid-swap leaves the old or the new snapshot, both whole.
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Swaps in `value`; whether it differs from the value in use.
    pub fn replace(&self, value: T) -> bool {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if **current == value {
            return false;
        }
        *current = Arc::new(value);
        true
    }
}
