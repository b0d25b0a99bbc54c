//! A few scoped threads working through numbered items: each takes the next item until none
//! remain or one has failed; the first failure is returned and the rest are not started.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// `work(0..items)` on at most `threads` threads; the results in item order.
pub fn map<T, E, F>(items: usize, threads: usize, work: F) -> Result<Vec<T>, E>
where
    T: Send,
    E: Send,
    F: Fn(usize) -> Result<T, E> + Sync,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<E>> = Mutex::new(None);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..items).map(|_| None).collect());
    let worker = || loop {
        if failed.load(Ordering::Relaxed) {
            return;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= items {
            return;
        }
        match work(i) {
            Ok(value) => results.lock().expect("results lock")[i] = Some(value),
            Err(e) => {
                failed.store(true, Ordering::Relaxed);
                first_error.lock().expect("error lock").get_or_insert(e);
                return;
            }
        }
    };
    let threads = threads.min(items);
    if threads <= 1 {
        worker();
    } else {
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(worker);
            }
        });
    }
    if let Some(e) = first_error.into_inner().expect("error lock") {
        return Err(e);
    }
    Ok(results
        .into_inner()
        .expect("results lock")
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_keep_their_order_and_the_first_failure_wins() {
        let squares = super::map(100, 4, |i| Ok::<_, ()>(i * i)).unwrap();
        assert_eq!(squares, (0..100).map(|i| i * i).collect::<Vec<_>>());
        let failed = super::map(100, 4, |i| if i == 7 { Err(i) } else { Ok(i) });
        assert_eq!(failed, Err(7));
        assert!(super::map(0, 4, |_| Ok::<(), ()>(())).unwrap().is_empty());
    }
}
