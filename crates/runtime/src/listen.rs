//! Where a server listens: a TCP `host:port` or a Unix socket `unix:///path`.
//!
//! A Unix socket is for node-local callers (the broker in a DaemonSet, model
//! services beside it): the kernel then tells the server who is calling
//! (peer credentials), and nothing off the node can reach it. Its file is owned
//! by the process that bound it: a stale one left by a dead process is replaced
//! at start, a live one is never touched, and the file goes away on clean shutdown.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::net::{TcpListener, UnixListener};

use crate::connections::ConnectionLimits;

/// Mode of a Unix socket file: owner and group may connect, others may not
/// (connecting needs write permission on the file).
pub const SOCKET_MODE: u32 = 0o660;

/// A `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// `unix:///path`: a Unix domain socket at an absolute path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = value.strip_prefix("unix:") {
            // `unix:///run/x.sock` and `unix:/run/x.sock` both name /run/x.sock, as
            // tonic's client reads them.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(format!(
                    "`{value}`: a Unix socket needs an absolute path, e.g. unix:///run/plenum/broker.sock"
                ));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        value.parse().map(Self::Tcp).map_err(|_| {
            format!("`{value}` is neither HOST:PORT (e.g. 127.0.0.1:7001) nor unix:///PATH")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Why a server could not listen.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: ListenAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot listen on {}: another process is serving on this socket (stop it, or choose another path)",
        path.display()
    )]
    SocketInUse { path: PathBuf },
    #[error("cannot listen on {}: the path exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot listen on {}: {source}", path.display())]
    Unix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A bound socket, ready for [`crate::grpc::GrpcServer::serve`], with the limits
/// its connections are held to.
pub struct Listener {
    pub(crate) socket: Socket,
    pub(crate) limits: ConnectionLimits,
}

pub(crate) enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

impl Listener {
    /// Binds `addr`, with default connection limits. For a Unix socket: creates the parent folder when missing,
    /// replaces a stale socket file, and sets the file's mode to [`SOCKET_MODE`].
    pub async fn bind(addr: &ListenAddr) -> Result<Self, ListenError> {
        let socket = match addr {
            ListenAddr::Tcp(addr) => {
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ListenError::Bind {
                            addr: ListenAddr::Tcp(*addr),
                            source,
                        })?;
                Socket::Tcp(listener)
            }
            ListenAddr::Unix(path) => {
                let (listener, file) = bind_unix(path)?;
                Socket::Unix(listener, file)
            }
        };
        Ok(Self {
            socket,
            limits: ConnectionLimits::default(),
        })
    }

    /// The same listener with other connection limits.
    pub fn with_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The address actually bound (the real port when `:0` was asked for).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match &self.socket {
            Socket::Tcp(listener) => listener.local_addr().map(ListenAddr::Tcp),
            Socket::Unix(_, file) => Ok(ListenAddr::Unix(file.path.clone())),
        }
    }
}

/// A listener bound by the caller (tests bind `127.0.0.1:0`), with default limits.
impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self {
            socket: Socket::Tcp(listener),
            limits: ConnectionLimits::default(),
        }
    }
}

fn bind_unix(path: &Path) -> Result<(UnixListener, SocketFile), ListenError> {
    let unix_error = |source| ListenError::Unix {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(unix_error)?;
    }
    remove_if_stale(path)?;
    let listener = UnixListener::bind(path).map_err(unix_error)?;
    // Between bind and chmod the file carries the umask's mode; the usual umask
    // (022) leaves it stricter than SOCKET_MODE, never looser.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(unix_error)?;
    let file = SocketFile::owned(path).map_err(unix_error)?;
    Ok((listener, file))
}

/// Removes `path` only when it is a socket nobody answers on: the file a killed
/// process left behind. A live socket or any other kind of file is an error.
fn remove_if_stale(path: &Path) -> Result<(), ListenError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenError::Unix {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(ListenError::NotASocket {
            path: path.to_owned(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ListenError::SocketInUse {
            path: path.to_owned(),
        }),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing a stale socket file left by a process that is gone");
            std::fs::remove_file(path).map_err(|source| ListenError::Unix {
                path: path.to_owned(),
                source,
            })
        }
        Err(source) => Err(ListenError::Unix {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The socket file this process bound; removed when dropped, unless another
/// process has since put its own socket at the same path.
pub(crate) struct SocketFile {
    path: PathBuf,
    device: u64,
    inode: u64,
}

impl SocketFile {
    fn owned(path: &Path) -> io::Result<Self> {
        let metadata = std::fs::symlink_metadata(path)?;
        Ok(Self {
            path: path.to_owned(),
            device: metadata.dev(),
            inode: metadata.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| metadata.dev() == self.device && metadata.ino() == self.inode);
        if ours && let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the socket file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_addresses() {
        assert_eq!(
            "127.0.0.1:7001".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:7001".parse().unwrap())
        );
        assert_eq!(
            "unix:///run/plenum/broker.sock"
                .parse::<ListenAddr>()
                .unwrap(),
            ListenAddr::Unix("/run/plenum/broker.sock".into())
        );
        assert_eq!(
            "unix:/run/b.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/b.sock".into())
        );
        assert!("unix://relative.sock".parse::<ListenAddr>().is_err());
        assert!("localhost".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn displays_as_parsed() {
        for text in ["127.0.0.1:7001", "unix:///run/plenum/broker.sock"] {
            assert_eq!(text.parse::<ListenAddr>().unwrap().to_string(), text);
        }
    }
}
