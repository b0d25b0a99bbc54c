//! The cap on concurrent distinct pulls per namespace: a slot is held per (namespace, model)
//! while its pull runs; requests for a model already being pulled share its slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Held = Arc<Mutex<HashMap<String, HashMap<String, usize>>>>;

#[derive(Default)]
pub struct Slots {
    held: Held,
}

impl Slots {
    /// A slot for `model` in `namespace`, or `None` when `cap` distinct models are already being pulled there.
    pub fn take(&self, namespace: &str, model: &str, cap: usize) -> Option<PullSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let models = held.entry(namespace.to_string()).or_default();
        if !models.contains_key(model) && models.len() >= cap {
            return None;
        }
        *models.entry(model.to_string()).or_default() += 1;
        Some(PullSlot {
            held: Some((self.held.clone(), namespace.to_string(), model.to_string())),
        })
    }
}

/// Released when dropped.
pub struct PullSlot {
    held: Option<(Held, String, String)>,
}

impl PullSlot {
    pub fn unlimited() -> PullSlot {
        PullSlot { held: None }
    }
}

impl Drop for PullSlot {
    fn drop(&mut self) {
        let Some((held, namespace, model)) = self.held.take() else {
            return;
        };
        let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(models) = held.get_mut(&namespace) {
            if let Some(count) = models.get_mut(&model) {
                *count -= 1;
                if *count == 0 {
                    models.remove(&model);
                }
            }
            if models.is_empty() {
                held.remove(&namespace);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_models_are_capped_and_joiners_share() {
        let slots = Slots::default();
        let a = slots.take("ns", "a", 1).unwrap();
        let a2 = slots.take("ns", "a", 1).unwrap();
        assert!(slots.take("ns", "b", 1).is_none());
        assert!(slots.take("other", "b", 1).is_some());
        drop(a);
        assert!(slots.take("ns", "b", 1).is_none());
        drop(a2);
        assert!(slots.take("ns", "b", 1).is_some());
    }
}
