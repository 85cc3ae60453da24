//! Which topics this node has subscribed on the bus. A topic is subscribed
//! when it gets its first local member (before the join is answered, so
//! nothing is missed) and unsubscribed [`UNSUBSCRIBE_DELAY`] after the last
//! one left, so a member who reconnects or a flapping room does not churn
//! SUBSCRIBE.

use banter_bus::{Bus, BusError, Topic};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a topic stays subscribed after its last local member left.
pub(crate) const UNSUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

/// See the module docs.
#[derive(Debug)]
pub(super) struct Subscriptions {
    bus: Arc<dyn Bus>,
    /// Topics subscribed on the bus. The async lock orders subscribe and
    /// unsubscribe calls, so a delayed unsubscribe cannot undo a fresh join.
    subscribed: tokio::sync::Mutex<HashSet<Topic>>,
}

impl Subscriptions {
    pub fn new(bus: Arc<dyn Bus>) -> Subscriptions {
        Subscriptions {
            bus,
            subscribed: tokio::sync::Mutex::default(),
        }
    }

    /// Subscribes `topic` unless it already is.
    pub async fn ensure(&self, topic: &Topic) -> Result<(), BusError> {
        let mut subscribed = self.subscribed.lock().await;
        if subscribed.contains(topic) {
            return Ok(());
        }
        let result = self.bus.subscribe(topic).await;
        // Recorded even on failure: a bus that is down keeps the wish and
        // restores it on reconnect, so it must also be unsubscribed later.
        subscribed.insert(topic.clone());
        result
    }

    /// Unsubscribes each of `due` (topics, with when they emptied) that is
    /// still `idle` once this holds the subscriptions' lock: a join that
    /// subscribed (or found subscribed) its topic meanwhile keeps it.
    /// Returns those the bus refused, to be tried again.
    pub async fn drop_idle(
        &self,
        due: Vec<(Topic, Instant)>,
        idle: impl Fn(&Topic) -> bool,
    ) -> Vec<(Topic, Instant)> {
        let mut subscribed = self.subscribed.lock().await;
        let mut refused = Vec::new();
        for (topic, since) in due {
            if !subscribed.contains(&topic) || !idle(&topic) {
                continue;
            }
            match self.bus.unsubscribe(&topic).await {
                Ok(()) => {
                    subscribed.remove(&topic);
                }
                Err(e) => {
                    tracing::warn!(?topic, error = %e, "unsubscribe failed; will retry");
                    refused.push((topic, since));
                }
            }
        }
        refused
    }
}
