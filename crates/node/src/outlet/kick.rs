//! A socket's "you must go now": set by the hub (slow consumer, stuck write,
//! drain) and polled by the socket's task on every wakeup, so it is an atomic
//! and a waker, not a lock. Who kicked first decides the close code.

use banter_protocol::CloseReason;
use futures_util::task::AtomicWaker;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::Poll;

/// The reasons a socket can be kicked for.
const KICK_REASONS: [CloseReason; 3] = [
    CloseReason::ShuttingDown,
    CloseReason::SlowConsumer,
    CloseReason::Internal,
];

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Kick {
    /// 0 while the socket may stay; else the index of the reason in [`KICK_REASONS`], plus one.
    reason: AtomicU8,
    waker: AtomicWaker,
}

impl Kick {
    /// Asks the socket to close with `reason`, unless it was already asked.
    pub fn kick(&self, reason: CloseReason) {
        let index = KICK_REASONS.iter().position(|r| *r == reason).unwrap_or(2) as u8 + 1;
        if self
            .reason
            .compare_exchange(0, index, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// Whether the socket was kicked.
    pub fn is_kicked(&self) -> bool {
        self.reason.load(Ordering::Acquire) != 0
    }

    /// Resolves once the socket was kicked.
    pub fn kicked(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_kicked() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.is_kicked() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Why: the first kick's reason.
    pub fn reason(&self) -> CloseReason {
        let index = self.reason.load(Ordering::Acquire);
        KICK_REASONS
            .get(usize::from(index).wrapping_sub(1))
            .copied()
            .unwrap_or(CloseReason::ShuttingDown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_kick_decides_the_reason() {
        let kick = Kick::default();
        assert!(!kick.is_kicked());
        kick.kick(CloseReason::SlowConsumer);
        kick.kick(CloseReason::ShuttingDown);
        assert!(kick.is_kicked());
        assert_eq!(kick.reason(), CloseReason::SlowConsumer);
    }
}
