//! Single flight: concurrent requests for the same work share one run of it. The work runs in
//! its own task, so it finishes even when every caller has given up (kubelet's deadline on
//! NodePublishVolume), and a retried call that arrives meanwhile joins it instead of starting
//! over. Across processes the cache's file locks do the same for blobs and snapshots.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The shared task ended without a result (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the shared pull task ended without a result")]
pub struct FlightLost;

type Map<K, T> = Arc<Mutex<HashMap<K, watch::Receiver<Option<T>>>>>;

pub struct Flights<K, T> {
    running: Map<K, T>,
}

impl<K, T> Default for Flights<K, T> {
    fn default() -> Self {
        Flights {
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K, T> Flights<K, T>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// Joins the flight for `key`, starting it with `work` if none is under way.
    /// Returns the result and whether this call started the flight.
    pub async fn run<F>(&self, key: K, work: impl FnOnce() -> F) -> Result<(T, bool), FlightLost>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (mut receiver, started) = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            match running.get(&key) {
                Some(receiver) => (receiver.clone(), false),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    running.insert(key.clone(), receiver.clone());
                    let task = work();
                    let done = Landing {
                        running: self.running.clone(),
                        key,
                    };
                    tokio::spawn(async move {
                        let value = task.await;
                        let _ = sender.send(Some(value));
                        drop(done);
                    });
                    (receiver, true)
                }
            }
        };
        let value = receiver
            .wait_for(Option::is_some)
            .await
            .map_err(|_| FlightLost)?;
        Ok((value.clone().expect("waited for a value"), started))
    }

    /// Flights under way.
    pub fn len(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes the flight from the map when its task ends, however it ends.
struct Landing<K: Eq + Hash, T> {
    running: Map<K, T>,
    key: K,
}

impl<K: Eq + Hash, T> Drop for Landing<K, T> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_late_callers_join() {
        let flights: Arc<Flights<&'static str, usize>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let work = |runs: Arc<AtomicUsize>| {
            move || async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                runs.fetch_add(1, Ordering::SeqCst) + 41
            }
        };
        // A caller that gives up early does not stop the flight.
        let abandoned = tokio::time::timeout(
            Duration::from_millis(20),
            flights.run("m", work(runs.clone())),
        )
        .await;
        assert!(abandoned.is_err());
        let mut joined = Vec::new();
        for _ in 0..8 {
            let (flights, runs) = (flights.clone(), runs.clone());
            joined.push(tokio::spawn(async move {
                flights.run("m", work(runs)).await.unwrap()
            }));
        }
        for handle in joined {
            let (value, started) = handle.await.unwrap();
            assert_eq!(value, 41);
            assert!(!started);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty());
    }
}
