//! How blob downloads use the network: the chunk size and streams per blob for parallel
//! ranged downloads (`None` = adaptive), and the cap on concurrent blob requests that every
//! layer and chunk of every pull sharing these options draws from.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Concurrent blob requests allowed by default (all layers and chunks together).
pub const DEFAULT_MAX_REQUESTS: usize = 16;

#[derive(Clone, Debug)]
pub struct TransferOptions {
    /// Bytes per Range request; `None` sizes chunks from the blob's size.
    pub chunk_size: Option<u64>,
    /// Streams per blob; `None` ramps up while the measured throughput keeps growing.
    pub streams_per_blob: Option<usize>,
    /// The global cap on blob requests in flight.
    pub max_requests: usize,
    /// Shared by every clone, so one daemon's concurrent pulls share one cap.
    budget: Arc<Semaphore>,
}

impl TransferOptions {
    pub fn new(
        chunk_size: Option<u64>,
        streams_per_blob: Option<usize>,
        max_requests: usize,
    ) -> Self {
        let max_requests = max_requests.max(1);
        TransferOptions {
            chunk_size: chunk_size.filter(|&c| c > 0),
            streams_per_blob: streams_per_blob.filter(|&s| s > 0),
            max_requests,
            budget: Arc::new(Semaphore::new(max_requests)),
        }
    }

    /// Waits for a free request slot; the slot is held until the permit is dropped.
    pub async fn request_slot(&self) -> OwnedSemaphorePermit {
        self.budget
            .clone()
            .acquire_owned()
            .await
            .expect("the request budget is never closed")
    }
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions::new(None, None, DEFAULT_MAX_REQUESTS)
    }
}
