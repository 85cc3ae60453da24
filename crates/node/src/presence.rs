//! Presence glue: how joins and leaves become `presence` events on the
//! room's topic, and how this node keeps its entries alive and restores
//! them. The stores themselves are `banter-presence`; who is local is the
//! hub's (the callers pass it in).

use banter_bus::{Bus, Topic};
use banter_presence::{Member, Presence};
use banter_protocol::{PresenceEvent, RoomId, ServerFrame, User};
use bytes::Bytes;

/// Publishes a presence event to the room (every node fans it out).
pub(crate) async fn announce(bus: &dyn Bus, room: &RoomId, event: PresenceEvent, count: usize) {
    let frame = ServerFrame::Presence {
        room: room.clone(),
        event,
        count,
    };
    let payload = Bytes::from(frame.to_json());
    if let Err(e) = bus.publish(&Topic::Room(room.clone()), payload).await {
        tracing::warn!(%room, error = %e, "presence event not published");
    }
}

/// Announces that `user` left `room` (their last connection there went, or
/// a crashed node's entry was swept), with the room's count after it.
pub(crate) async fn announce_leave(
    bus: &dyn Bus,
    presence: &dyn Presence,
    room: &RoomId,
    user: User,
) {
    let count = match presence.users(room).await {
        Ok(users) => users.len(),
        Err(e) => {
            tracing::warn!(%room, error = %e, "presence read failed; leave not announced");
            return;
        }
    };
    announce(bus, room, PresenceEvent::Leave { user }, count).await;
}

/// Keeps this node's entries (`local`) alive and announces the departures
/// of members whose node stopped refreshing them (a crashed node).
pub(crate) async fn refresh(bus: &dyn Bus, presence: &dyn Presence, local: Vec<(RoomId, Member)>) {
    let entries: Vec<_> = local
        .into_iter()
        .map(|(room, member)| (room, member.conn))
        .collect();
    match presence.refresh(&entries).await {
        Ok(departed) => {
            for (room, user) in departed {
                tracing::info!(%room, user = %user.id, "swept a member of a node that stopped refreshing");
                announce_leave(bus, presence, &room, user).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "presence refresh failed"),
    }
}

/// Registers every local member in presence again (idempotent): after the
/// bus reconnected, Redis may have lost everything (a restart without
/// persistence).
pub(crate) async fn reregister(presence: &dyn Presence, local: Vec<(RoomId, Member)>) {
    tracing::info!(
        entries = local.len(),
        "bus reconnected: re-registering presence"
    );
    for (room, member) in local {
        if let Err(e) = presence.join(&room, &member).await {
            tracing::warn!(%room, error = %e, "presence re-registration failed");
            return;
        }
    }
}
