//! What the subscriber task does with a node's subscribe and unsubscribe
//! requests on a live link: references per topic, baselines, delayed
//! unsubscribes of idle rooms.

use tokio::time::{self, Instant};

use super::link::Sink;
use super::repair::{Cursor, Repairs};
use super::subscriber::Subscriber;
use super::{COMMAND_TIMEOUT, Request};
use crate::{BusError, Topic};

impl Subscriber {
    /// Answers one request on a live connection. `Err`: the connection
    /// failed and must be replaced (the wanted set is already updated).
    pub(super) async fn answer(
        &mut self,
        sink: &mut Sink,
        request: Request,
        repairs: &mut Repairs,
    ) -> Result<(), String> {
        match request {
            Request::Subscribe(topic, reply) => {
                self.take_ref(&topic);
                if self.topics.contains_key(&topic) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let baseline = self.baselines(vec![topic.clone()]).await;
                let cursor = baseline
                    .into_iter()
                    .next()
                    .map_or(Cursor::live_without_history(), |(_, c)| c);
                let channel = self.names.channel(&topic);
                self.topics.insert(topic.clone(), cursor);
                match time::timeout(COMMAND_TIMEOUT, sink.subscribe(&[channel])).await {
                    Ok(Ok(())) => {
                        let _ = reply.send(Ok(()));
                        Ok(())
                    }
                    // Redis refused it (ACL, ...): the connection is fine,
                    // the topic cannot be had.
                    // (A cluster's MOVED, ASK, TRYAGAIN or CLUSTERDOWN is not
                    // a refusal: the topology changed, the link is rebuilt.)
                    Ok(Err(e))
                        if matches!(e.kind(), redis::ErrorKind::Server(_))
                            && !e.is_cluster_error() =>
                    {
                        self.topics.remove(&topic);
                        let _ = reply.send(Err(BusError::Redis(e)));
                        Ok(())
                    }
                    // Kept as wanted: the next connection restores it.
                    Ok(Err(e)) => {
                        self.topics.insert(topic, Cursor::Pending);
                        let reason = format!("SUBSCRIBE failed: {e}");
                        let _ = reply.send(Err(BusError::Redis(e)));
                        Err(reason)
                    }
                    Err(_) => {
                        self.topics.insert(topic, Cursor::Pending);
                        let _ = reply.send(Err(BusError::Down));
                        Err("SUBSCRIBE timed out".into())
                    }
                }
            }
            Request::Unsubscribe(topic, reply) => {
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
                // A user's topic goes at once: a direct message sent from
                // now on finds nobody listening, and its sender is told.
                let result = self.drop_topics(sink, vec![topic], repairs).await;
                let _ = reply.send(Ok(()));
                result
            }
        }
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
