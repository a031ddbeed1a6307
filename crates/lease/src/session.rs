//! The background half of the client: one session at a time, kept alive with
//! heartbeats, reopened with backoff, with every held lease reclaimed on reopen.

use std::sync::{Arc, Weak};
use std::time::Duration;

use plenum_proto::broker::v1::{self as pb, session_event, session_request};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Inner, LeaseEvent, SessionInfo};

/// A grant announced on the session but claimed by no Acquire reply within this
/// long belongs to a call that gave up: give it back.
const UNCLAIMED_GRANT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn keep_session(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(50);
    while !inner.shutdown.is_cancelled() {
        match run_session(&inner).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(error) => tracing::debug!(%error, "broker session failed"),
        }
        inner.session.send_replace(None);
        let _ = inner.events.send(LeaseEvent::Disconnected);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = inner.shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(inner.max_backoff);
    }
}

/// One session, from hello to the end of the stream. Ok when it was open for a while.
async fn run_session(inner: &Arc<Inner>) -> Result<(), tonic::Status> {
    let (outbound, outbound_rx) = mpsc::channel(8);
    let reclaims: Vec<pb::LeaseClaim> = inner
        .held()
        .values()
        .map(|held| held.claim.clone())
        .collect();
    let hello = pb::SessionRequest {
        kind: Some(session_request::Kind::Hello(pb::Hello {
            holder: Some(inner.holder.clone()),
            reclaims,
        })),
    };
    outbound
        .send(hello)
        .await
        .map_err(|_| tonic::Status::internal("session channel closed"))?;
    let mut events = inner
        .client
        .clone()
        .open_session(ReceiverStream::new(outbound_rx))
        .await?
        .into_inner();
    let opened = match events.message().await? {
        Some(pb::SessionEvent {
            kind: Some(session_event::Kind::Opened(opened)),
        }) => opened,
        _ => {
            return Err(tonic::Status::internal(
                "the broker did not open the session",
            ));
        }
    };
    for reclaim in &opened.reclaims {
        if !reclaim.accepted {
            inner.held().remove(&reclaim.lease_id);
            tracing::warn!(lease = %reclaim.lease_id, reason = %reclaim.reason, "the broker refused a reclaim; the lease is lost");
            let _ = inner.events.send(LeaseEvent::Lost {
                lease_id: reclaim.lease_id.clone(),
                reason: reclaim.reason.clone(),
            });
        }
    }
    tracing::info!(session = %opened.session_id, broker = %opened.broker_instance_id, "broker session open");
    inner.session.send_replace(Some(SessionInfo {
        session_id: opened.session_id.clone(),
        broker_instance_id: opened.broker_instance_id.clone(),
    }));
    let _ = inner.events.send(LeaseEvent::Connected {
        session_id: opened.session_id,
        broker_instance_id: opened.broker_instance_id,
    });

    let interval = Duration::from_millis(opened.heartbeat_interval_ms.max(50));
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                let beat = pb::SessionRequest {
                    kind: Some(session_request::Kind::Heartbeat(beat_report(inner))),
                };
                if outbound.send(beat).await.is_err() {
                    return Ok(());
                }
                release_unclaimed(inner);
            }
            event = events.message() => match event? {
                Some(event) => handle_event(inner, event),
                None => return Ok(()),
            },
            () = inner.shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Which leases are busy, how long the idle ones have been idle, and the device
/// bytes each reached since the last heartbeat (reported once, then cleared).
fn beat_report(inner: &Inner) -> pb::Heartbeat {
    let mut held = inner.held();
    let busy_lease_ids = held
        .iter()
        .filter(|(_, held)| held.busy)
        .map(|(id, _)| id.clone())
        .collect();
    let idle_ms = held
        .iter()
        .filter(|(_, held)| !held.busy)
        .filter_map(|(id, held)| Some((id.clone(), held.last_used?)))
        .map(|(id, at)| {
            (
                id,
                u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX),
            )
        })
        .collect();
    let used_bytes = held
        .iter_mut()
        .filter_map(|(id, held)| Some((id.clone(), held.used_peak.take()?)))
        .collect();
    pb::Heartbeat {
        busy_lease_ids,
        idle_ms,
        used_bytes,
    }
}

fn handle_event(inner: &Inner, event: pb::SessionEvent) {
    match event.kind {
        Some(session_event::Kind::Revoke(revoke)) => {
            tracing::info!(lease = %revoke.lease_id, reason = %revoke.reason, "the broker revoked a lease");
            let _ = inner.events.send(LeaseEvent::Revoked {
                lease_id: revoke.lease_id,
                deadline: Duration::from_millis(revoke.deadline_ms),
                reason: revoke.reason,
            });
        }
        Some(session_event::Kind::Granted(granted)) => {
            if let Some(lease) = granted.lease
                && !inner.held().contains_key(&lease.lease_id)
            {
                inner.unclaimed().insert(lease.lease_id, Instant::now());
            }
        }
        Some(session_event::Kind::Shutdown(shutdown)) => {
            tracing::info!(reason = %shutdown.reason, "the broker is shutting down; will reconnect and reclaim");
        }
        Some(session_event::Kind::Opened(_)) | None => {}
    }
}

fn release_unclaimed(inner: &Inner) {
    let now = Instant::now();
    let stale: Vec<String> = {
        let held = inner.held();
        let mut unclaimed = inner.unclaimed();
        unclaimed.retain(|lease, _| !held.contains_key(lease));
        let stale = unclaimed
            .iter()
            .filter(|(_, at)| now.duration_since(**at) > UNCLAIMED_GRANT_TIMEOUT)
            .map(|(lease, _)| lease.clone())
            .collect();
        unclaimed.retain(|_, at| now.duration_since(*at) <= UNCLAIMED_GRANT_TIMEOUT);
        stale
    };
    for lease in stale {
        tracing::warn!(%lease, "a grant reached no Acquire caller; giving it back");
        let _ = inner.to_release.send(lease);
    }
}

/// Releases leases whose guards were dropped, in the order they were dropped.
pub(crate) async fn release_dropped(
    inner: Weak<Inner>,
    mut queue: mpsc::UnboundedReceiver<String>,
) {
    while let Some(lease_id) = queue.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let session_id = inner
            .session
            .borrow()
            .as_ref()
            .map(|info| info.session_id.clone());
        let Some(session_id) = session_id else {
            // No session: the broker releases it when the grace runs out.
            continue;
        };
        let result = inner
            .client
            .clone()
            .release(pb::ReleaseRequest {
                session_id,
                lease_id: lease_id.clone(),
            })
            .await;
        if let Err(status) = result {
            tracing::debug!(lease = %lease_id, %status, "release of a dropped lease failed");
        }
    }
}
