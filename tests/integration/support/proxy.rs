//! A TCP proxy between a runner and PostgreSQL that a test can cut or stall, to make the
//! database "go away" without touching the shared server.
//!
//! - `cut()`: closes every connection and refuses new ones (a crash, a restart).
//! - `stall()`: keeps connections open but forwards nothing (a dead NAT entry, a partition).
//! - `restore()`: back to forwarding.
//!
//! Shared with the chaos suite (tests/chaos), which uses parts the integration tests do not.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    Cut,
    Stall,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: watch::Sender<State>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
    /// Connections accepted so far, refused ones (while cut) included.
    accepted: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (state, _) = watch::channel(State::Open);
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accepted = Arc::new(AtomicU64::new(0));
        let accept = {
            let state = state.clone();
            let conns = conns.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    if *state.borrow() == State::Cut {
                        drop(client);
                        continue;
                    }
                    let rx = state.subscribe();
                    let task = tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::join!(pump(cr, sw, rx.clone()), pump(sr, cw, rx));
                    });
                    conns.lock().unwrap().push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        Proxy {
            addr,
            state,
            conns,
            accept,
            accepted,
        }
    }

    /// Connections accepted so far, including those refused while cut: how often clients tried.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// `url` (a postgres URL to the upstream) rewritten to go through this proxy.
    pub fn url_for(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.addr.port())).unwrap();
        u.to_string()
    }

    pub fn cut(&self) {
        self.state.send_replace(State::Cut);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn stall(&self) {
        self.state.send_replace(State::Stall);
    }

    pub fn restore(&self) {
        self.state.send_replace(State::Open);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// Copies bytes one way; holds them while stalled, stops when cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<State>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let now = *state.borrow_and_update();
            match now {
                State::Open => break,
                State::Cut => return,
                State::Stall => {
                    if state.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The upstream address of a postgres URL with a TCP host.
pub fn upstream_of(url: &str) -> SocketAddr {
    let u = url::Url::parse(url).unwrap();
    let host = u.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{}", u.port().unwrap_or(5432))
        .parse()
        .unwrap()
}
