//! Live event streams held open at once: at most `max_streams` in all and `max_per_client` for any
//! one client (an API key, or an address when the API is open), so that one client opening streams
//! without end cannot take every slot from the others.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct StreamSlots {
    all: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<String, usize>>>,
    max_per_client: usize,
}

/// A stream's slot, given back when the stream ends.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    client: String,
    per_client: Arc<Mutex<HashMap<String, usize>>>,
}

impl StreamSlots {
    pub fn new(max_streams: usize, max_per_client: usize) -> Self {
        Self { all: Arc::new(Semaphore::new(max_streams)), per_client: Arc::default(), max_per_client }
    }

    /// A slot for `client`, or None when it holds its share or every slot is taken.
    pub fn take(&self, client: &str) -> Option<Slot> {
        let mut held = self.per_client.lock().unwrap();
        let n = held.get(client).copied().unwrap_or(0);
        if n >= self.max_per_client {
            return None;
        }
        let permit = self.all.clone().try_acquire_owned().ok()?;
        held.insert(client.to_string(), n + 1);
        Some(Slot { _permit: permit, client: client.to_string(), per_client: self.per_client.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.per_client.lock().unwrap();
        if let Some(n) = held.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.client);
            }
        }
    }
}
