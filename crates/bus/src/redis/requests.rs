//! What the subscriber task does with a node's subscribe and unsubscribe
//! requests on a live link: references per topic, baselines, delayed
//! unsubscribes of idle rooms.

use tokio::sync::oneshot;
use tokio::time::{self, Instant};

use super::link::Sink;
use super::repair::{Cursor, Repairs};
use super::subscriber::Subscriber;
use super::{COMMAND_TIMEOUT, Request};
use crate::{BusError, Topic};

impl Subscriber {
    /// Answers requests taken together on a live connection, in their
    /// order: each run of subscribes costs one baseline read per new topic
    /// (pipelined on the command connection) and one `SUBSCRIBE` for them
    /// all, so a node taking thousands of connections a second does not wait
    /// two round trips per topic in this one task. `Err`: the connection
    /// failed and must be replaced; the requests not answered yet are
    /// answered as by a bus that is down (the wanted set stays right).
    pub(super) async fn answer_all(
        &mut self,
        sink: &mut Sink,
        requests: Vec<Request>,
        repairs: &mut Repairs,
    ) -> Result<(), String> {
        let mut requests = requests.into_iter();
        // Each run of subscribes goes as one (every one of them is answered
        // whatever the outcome), before the unsubscribe that ends it.
        let result = async {
            let mut subscribes = Vec::new();
            for request in requests.by_ref() {
                match request {
                    Request::Subscribe(topic, reply) => subscribes.push((topic, reply)),
                    Request::Unsubscribe(topic, reply) => {
                        let run = std::mem::take(&mut subscribes);
                        if let Err(reason) = self.subscribe_all(sink, run).await {
                            self.answer_down(Request::Unsubscribe(topic, reply));
                            return Err(reason);
                        }
                        self.unsubscribe(sink, topic, reply, repairs).await?;
                    }
                }
            }
            self.subscribe_all(sink, subscribes).await
        }
        .await;
        if result.is_err() {
            for request in requests {
                self.answer_down(request);
            }
        }
        result
    }

    /// Answers a request as a bus that is down: a subscribe records the
    /// topic for the next connection and answers `Down`, an unsubscribe
    /// forgets it.
    pub(super) fn answer_down(&mut self, request: Request) {
        match request {
            Request::Subscribe(topic, reply) => {
                self.take_ref(&topic);
                self.topics.entry(topic).or_insert(Cursor::Pending);
                let _ = reply.send(Err(BusError::Down));
            }
            Request::Unsubscribe(topic, reply) => {
                if self.give_ref(&topic) {
                    self.idle.remove(&topic);
                    self.topics.remove(&topic);
                }
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Takes a reference on each topic and subscribes those not subscribed
    /// yet: their baselines first, then one `SUBSCRIBE`. Every request is
    /// answered, also on `Err` (the connection failed; the topics stay
    /// wanted, for the next connection).
    async fn subscribe_all(
        &mut self,
        sink: &mut Sink,
        requests: Vec<(Topic, oneshot::Sender<Result<(), BusError>>)>,
    ) -> Result<(), String> {
        let mut fresh = Vec::new();
        let mut waiting = Vec::with_capacity(requests.len());
        for (topic, reply) in requests {
            self.take_ref(&topic);
            if self.topics.contains_key(&topic) {
                let _ = reply.send(Ok(()));
                continue;
            }
            if !fresh.contains(&topic) {
                fresh.push(topic.clone());
            }
            waiting.push((topic, reply));
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let mut channels = Vec::with_capacity(fresh.len());
        for (topic, cursor) in self.baselines(fresh).await {
            channels.push(self.names.channel(&topic));
            self.topics.insert(topic, cursor);
        }
        let failure = match time::timeout(COMMAND_TIMEOUT, sink.subscribe(&channels)).await {
            Ok(Ok(())) => {
                for (_, reply) in waiting {
                    let _ = reply.send(Ok(()));
                }
                return Ok(());
            }
            // Redis refused it (ACL, ...): the connection is fine, one of
            // the topics cannot be had. Each is asked alone, so the others
            // are not refused with it.
            // (A cluster's MOVED, ASK, TRYAGAIN or CLUSTERDOWN is not a
            // refusal: the topology changed, the link is rebuilt.)
            Ok(Err(e))
                if matches!(e.kind(), redis::ErrorKind::Server(_)) && !e.is_cluster_error() =>
            {
                if channels.len() > 1 {
                    for (topic, reply) in waiting {
                        // Undone, then asked again alone (its reference too).
                        self.topics.remove(&topic);
                        self.give_ref(&topic);
                        Box::pin(self.subscribe_all(sink, vec![(topic, reply)])).await?;
                    }
                    return Ok(());
                }
                let (kind, detail) = (e.kind(), e.to_string());
                for (topic, reply) in waiting {
                    self.topics.remove(&topic);
                    let refused = (kind, "SUBSCRIBE refused", detail.clone());
                    let _ = reply.send(Err(BusError::Redis(refused.into())));
                }
                return Ok(());
            }
            Ok(Err(e)) => format!("SUBSCRIBE failed: {e}"),
            Err(_) => "SUBSCRIBE timed out".into(),
        };
        // Kept as wanted: the next connection restores them.
        for (topic, reply) in waiting {
            self.topics.insert(topic, Cursor::Pending);
            let _ = reply.send(Err(BusError::Down));
        }
        Err(failure)
    }

    /// Gives a reference on `topic` back; at its last, a room waits
    /// [`Subscriber::unsubscribe_delay`] (a member may come back), a user's
    /// topic goes at once.
    async fn unsubscribe(
        &mut self,
        sink: &mut Sink,
        topic: Topic,
        reply: oneshot::Sender<Result<(), BusError>>,
        repairs: &mut Repairs,
    ) -> Result<(), String> {
        if !self.give_ref(&topic) {
            let _ = reply.send(Ok(()));
            return Ok(());
        }
        if let Topic::Room(_) = topic
            && !self.unsubscribe_delay.is_zero()
        {
            self.idle.insert(topic, Instant::now());
            let _ = reply.send(Ok(()));
            return Ok(());
        }
        // A user's topic goes at once: a direct message sent from now on
        // finds nobody listening, and its sender is told.
        let result = self.drop_topics(sink, vec![topic], repairs).await;
        let _ = reply.send(Ok(()));
        result
    }

    /// Takes a reference on `topic`; it is no longer idle.
    pub(super) fn take_ref(&mut self, topic: &Topic) {
        *self.refs.entry(topic.clone()).or_default() += 1;
        self.idle.remove(topic);
    }

    /// Gives a reference back: `true` when it was the topic's last.
    pub(super) fn give_ref(&mut self, topic: &Topic) -> bool {
        match self.refs.get_mut(topic) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.refs.remove(topic);
                true
            }
            None => false,
        }
    }

    /// Unsubscribes, in one command, every room idle for longer than the delay.
    pub(super) async fn unsubscribe_idle(
        &mut self,
        sink: &mut Sink,
        repairs: &mut Repairs,
    ) -> Result<(), String> {
        let now = Instant::now();
        let delay = self.unsubscribe_delay;
        if !self
            .idle
            .values()
            .any(|since| now.duration_since(*since) >= delay)
        {
            return Ok(());
        }
        // With one due, those halfway there go too: rooms that emptied
        // together leave together, in one command.
        let due: Vec<Topic> = self
            .idle
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= delay / 2)
            .map(|(t, _)| t.clone())
            .collect();
        for topic in &due {
            self.idle.remove(topic);
        }
        self.drop_topics(sink, due, repairs).await
    }

    /// Stops delivering `topics` now (the wanted set filters the stream,
    /// whatever Redis says) and tells Redis in one UNSUBSCRIBE. `Err`: the
    /// connection failed and must be replaced.
    async fn drop_topics(
        &mut self,
        sink: &mut Sink,
        topics: Vec<Topic>,
        repairs: &mut Repairs,
    ) -> Result<(), String> {
        let mut channels = Vec::with_capacity(topics.len());
        for topic in topics {
            repairs.forget(&topic);
            if self.topics.remove(&topic).is_some() {
                channels.push(self.names.channel(&topic));
            }
        }
        if channels.is_empty() {
            return Ok(());
        }
        match time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(&channels)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("UNSUBSCRIBE failed: {e}")),
            Err(_) => Err("UNSUBSCRIBE timed out".into()),
        }
    }
}
