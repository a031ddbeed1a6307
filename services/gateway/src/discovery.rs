//! Where a backend's replicas are: fixed `http://host:port` URLs, and
//! `dns://host:port` names whose every address is a replica. Names are resolved
//! again every interval; what changed reaches the balancer as tower's
//! [`Change`]s, so replicas join and leave without a restart.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tower::discover::Change;

/// How often `dns://` names are resolved again, unless told otherwise.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// A resolution that takes longer than this counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// While a name keeps failing to resolve, one warning per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A replica's key in the balancer: the URL it is dialled at.
pub type ReplicaUrl = Arc<str>;

/// One `--detector` / `--ocr` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One replica at a fixed URL.
    Fixed(String),
    /// Every address the name resolves to is a replica on `port`.
    Dns { host: String, port: u16 },
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("`{0}`: expected http://host:port or dns://host:port")]
    Scheme(String),
    #[error("`{0}`: a dns:// target is dns://host:port, with a port and nothing after it")]
    DnsShape(String),
    #[error("`{url}`: {source}")]
    Url {
        url: String,
        source: tonic::transport::Error,
    },
}

impl Target {
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("dns://") {
            let shape = || TargetError::DnsShape(text.to_owned());
            let (host, port) = rest.rsplit_once(':').ok_or_else(shape)?;
            let port: u16 = port.parse().map_err(|_| shape())?;
            if host.is_empty() || host.contains(['/', '?', '#', '@']) {
                return Err(shape());
            }
            return Ok(Self::Dns {
                host: host.trim_start_matches('[').trim_end_matches(']').into(),
                port,
            });
        }
        // Any other URL tonic can dial (http://, and whatever else its Endpoint
        // takes) is one replica, as before names were resolved.
        if !text.contains("://") {
            return Err(TargetError::Scheme(text.to_owned()));
        }
        tonic::transport::Endpoint::from_shared(text.to_owned()).map_err(|source| {
            TargetError::Url {
                url: text.to_owned(),
                source,
            }
        })?;
        Ok(Self::Fixed(text.to_owned()))
    }
}

/// Turns a name into addresses. The product asks the system resolver; tests
/// answer from a table they change.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// The system's resolver (`getaddrinfo` on a blocking thread, as
/// [`tokio::net::lookup_host`] does): whatever `/etc/resolv.conf` and
/// `/etc/hosts` say, cluster DNS included.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// A shared [`Resolve`].
#[derive(Clone)]
pub struct Resolver(Arc<dyn Resolve>);

impl<R: Resolve> From<Arc<R>> for Resolver {
    fn from(resolve: Arc<R>) -> Self {
        Self(resolve)
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self(Arc::new(SystemResolver))
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

/// How a backend's `dns://` names are resolved, and how often.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub resolver: Resolver,
    /// Time between two resolutions of every name.
    pub interval: Duration,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            resolver: Resolver::default(),
            interval: DEFAULT_RESOLVE_INTERVAL,
        }
    }
}

/// Who keeps the books of the replicas as discovery finds and loses them.
pub trait Membership: Send + 'static {
    type Replica: Send + 'static;
    /// A new replica; `None` when it cannot be dialled (it is left out).
    fn join(&self, url: &ReplicaUrl) -> Option<Self::Replica>;
    fn leave(&self, url: &ReplicaUrl);
    /// The first round of resolution is over: an empty set from now on means
    /// there is no replica, not that none was looked for yet.
    fn settle(&self);
}

/// The changes to the replica set, as [`tower::balance::p2c::Balance`] takes them.
pub struct Changes<R>(mpsc::UnboundedReceiver<Change<ReplicaUrl, R>>);

impl<R> Stream for Changes<R> {
    type Item = Result<Change<ReplicaUrl, R>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|change| change.map(Ok))
    }
}

/// Starts finding `targets` on its own task, which ends when the returned
/// stream is dropped. Fixed URLs join once; names are resolved at once, then
/// every `discovery.interval`.
pub fn spawn<M: Membership>(
    backend: &'static str,
    targets: Vec<Target>,
    discovery: Discovery,
    membership: M,
) -> Changes<M::Replica> {
    let (tx, rx) = mpsc::unbounded_channel();
    let names = targets
        .iter()
        .filter_map(|target| match target {
            Target::Dns { host, port } => Some(Name::new(host.clone(), *port)),
            Target::Fixed(_) => None,
        })
        .collect();
    let fixed = targets
        .into_iter()
        .filter_map(|target| match target {
            Target::Fixed(url) => Some(ReplicaUrl::from(url)),
            Target::Dns { .. } => None,
        })
        .collect();
    let finder = Finder {
        backend,
        fixed,
        names,
        discovery,
        membership,
        current: BTreeSet::new(),
        tx,
    };
    tokio::spawn(finder.run());
    Changes(rx)
}

/// One `dns://` name and what is remembered of it between rounds.
struct Name {
    host: String,
    port: u16,
    /// The addresses of the last answer; kept through failures.
    last_good: BTreeSet<ReplicaUrl>,
    /// When the current run of failures was last logged at warn.
    warned_at: Option<Instant>,
}

impl Name {
    fn new(host: String, port: u16) -> Self {
        Self {
            host,
            port,
            last_good: BTreeSet::new(),
            warned_at: None,
        }
    }
}

struct Finder<M: Membership> {
    backend: &'static str,
    fixed: Vec<ReplicaUrl>,
    names: Vec<Name>,
    discovery: Discovery,
    membership: M,
    /// The replicas the balancer was told about.
    current: BTreeSet<ReplicaUrl>,
    tx: mpsc::UnboundedSender<Change<ReplicaUrl, M::Replica>>,
}

impl<M: Membership> Finder<M> {
    async fn run(mut self) {
        let mut first = true;
        loop {
            let wanted = self.resolve().await;
            if self.apply(wanted).is_err() {
                return;
            }
            if first {
                self.membership.settle();
                first = false;
            }
            if self.names.is_empty() {
                // Nothing will change: wait only for the balancer to go away.
                self.tx.closed().await;
                return;
            }
            tokio::select! {
                () = self.tx.closed() => return,
                () = tokio::time::sleep(self.discovery.interval) => {}
            }
        }
    }

    /// The replicas every target names now; a name that failed to resolve keeps
    /// its last answer, so a DNS blip does not empty the pool.
    async fn resolve(&mut self) -> BTreeSet<ReplicaUrl> {
        let mut wanted: BTreeSet<ReplicaUrl> = self.fixed.iter().cloned().collect();
        for name in &mut self.names {
            let answer = tokio::time::timeout(
                RESOLVE_TIMEOUT,
                self.discovery.resolver.0.resolve(&name.host, name.port),
            )
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer in {RESOLVE_TIMEOUT:?}"),
                ))
            });
            match answer {
                Ok(addrs) => {
                    if name.warned_at.take().is_some() {
                        tracing::info!(backend = self.backend, host = %name.host, replicas = addrs.len(), "name resolves again");
                    }
                    name.last_good = addrs
                        .iter()
                        .map(|addr| ReplicaUrl::from(format!("http://{addr}")))
                        .collect();
                }
                Err(error) => {
                    let now = Instant::now();
                    if name
                        .warned_at
                        .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
                    {
                        name.warned_at = Some(now);
                        tracing::warn!(
                            backend = self.backend,
                            host = %name.host,
                            %error,
                            kept = name.last_good.len(),
                            "cannot resolve a backend name; keeping its last replicas"
                        );
                    }
                }
            }
            wanted.extend(name.last_good.iter().cloned());
        }
        wanted
    }

    /// Tells the balancer what changed. Fails when the balancer is gone.
    fn apply(&mut self, wanted: BTreeSet<ReplicaUrl>) -> Result<(), ()> {
        let gone: Vec<ReplicaUrl> = self.current.difference(&wanted).cloned().collect();
        for url in gone {
            tracing::info!(backend = self.backend, %url, "replica left");
            self.current.remove(&url);
            self.membership.leave(&url);
            self.tx.send(Change::Remove(url)).map_err(drop)?;
        }
        let added: Vec<ReplicaUrl> = wanted.difference(&self.current).cloned().collect();
        for url in added {
            let Some(replica) = self.membership.join(&url) else {
                continue;
            };
            tracing::info!(backend = self.backend, %url, "replica joined");
            self.current.insert(url.clone());
            self.tx.send(Change::Insert(url, replica)).map_err(drop)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("http://10.0.0.1:7002").unwrap(),
            Target::Fixed("http://10.0.0.1:7002".into())
        );
        assert_eq!(
            Target::parse("dns://plenum-detector.plenum.svc:7002").unwrap(),
            Target::Dns {
                host: "plenum-detector.plenum.svc".into(),
                port: 7002
            }
        );
        assert_eq!(
            Target::parse("dns://[::1]:7002").unwrap(),
            Target::Dns {
                host: "::1".into(),
                port: 7002
            }
        );
        for bad in [
            "dns://detector",
            "dns://detector:port",
            "dns://:7002",
            "dns://detector:7002/x",
            "dns:///detector:7002",
            "detector:7002",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
