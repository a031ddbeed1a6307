//! The service's half of the session protocol: one channel to each holder's event
//! stream and one to each queued Acquire call, and delivery of what the ledger
//! wants said. Kept beside the ledger under the same lock, so a grant can never
//! be announced before its caller is listening.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use plenum_proto::broker::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::convert::{event_to_proto, lease_to_proto};
use crate::ledger::{Ledger, Outgoing, SessionEvent};

#[derive(Debug, Default)]
pub(crate) struct Outlets {
    sessions: HashMap<String, mpsc::UnboundedSender<pb::SessionEvent>>,
    waiters: HashMap<u64, oneshot::Sender<pb::Lease>>,
}

impl Outlets {
    /// Events for `session_id` go to `events` until the ledger ends the session;
    /// then the sender is dropped, which ends the holder's stream.
    pub(crate) fn open_session(
        &mut self,
        session_id: &str,
        events: mpsc::UnboundedSender<pb::SessionEvent>,
    ) {
        self.sessions.insert(session_id.to_owned(), events);
    }

    /// The channel a queued Acquire waits on. Closed without a value when the
    /// request leaves the queue ungranted (its session ended).
    pub(crate) fn await_grant(&mut self, waiter: u64) -> oneshot::Receiver<pb::Lease> {
        let (reply, grant) = oneshot::channel();
        self.waiters.insert(waiter, reply);
        grant
    }

    /// Delivers everything the ledger has to say. An answer nobody takes (the
    /// caller left) is given back, and its holder never hears of that grant.
    pub(crate) fn deliver(&mut self, ledger: &mut Ledger, now: Instant) {
        loop {
            let outgoing = ledger.take_outgoing();
            if outgoing.is_empty() {
                return;
            }
            let mut undelivered = HashSet::new();
            for out in outgoing {
                match out {
                    Outgoing::Answer { waiter, lease } => {
                        let lease_id = lease.lease_id.clone();
                        let taken = self
                            .waiters
                            .remove(&waiter)
                            .is_some_and(|reply| reply.send(lease_to_proto(lease)).is_ok());
                        if !taken {
                            // May grant others: their deliveries come round the loop.
                            ledger.discard_undelivered(&lease_id, now);
                            undelivered.insert(lease_id);
                        }
                    }
                    Outgoing::Event { session_id, event } => {
                        if let SessionEvent::Granted(lease) = &event
                            && undelivered.contains(&lease.lease_id)
                        {
                            continue;
                        }
                        if let Some(events) = self.sessions.get(&session_id) {
                            let _ = events.send(event_to_proto(event));
                        }
                    }
                    Outgoing::WaiterGone { waiter } => {
                        self.waiters.remove(&waiter);
                    }
                    Outgoing::SessionEnded { session_id } => {
                        self.sessions.remove(&session_id);
                    }
                }
            }
        }
    }

    /// Tells every session the broker is stopping, so holders keep their leases.
    pub(crate) fn announce_shutdown(&self, reason: &str) {
        for events in self.sessions.values() {
            let _ = events.send(pb::SessionEvent {
                kind: Some(pb::session_event::Kind::Shutdown(pb::Shutdown {
                    reason: reason.to_owned(),
                })),
            });
        }
    }
}
