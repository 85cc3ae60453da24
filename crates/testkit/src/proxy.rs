//! A TCP proxy on loopback that a test can cut: what a proxy blip, a
//! firewall or a network partition does to one client's connection while
//! the server itself stays up, or a server across a network (a delay on its
//! replies). Real sockets, real bytes; only the wire in between is the
//! test's.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// A proxy from a free loopback port to `target`, running until dropped.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// While set, open connections are closed and new ones refused.
    cut: AtomicBool,
    /// Set on drop: the accept loop stops.
    stopped: AtomicBool,
    /// Both ends of every proxied connection, to close them on a cut.
    open: Mutex<Vec<TcpStream>>,
    /// How long the server's bytes take to reach the client, µs.
    delay_us: AtomicU64,
}

impl Proxy {
    /// Starts forwarding a free port of 127.0.0.1 to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let shared = Arc::new(Shared::default());
        let accept = shared.clone();
        thread::spawn(move || {
            while !accept.stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) if accept.cut.load(Ordering::Relaxed) => drop(client),
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(target) {
                            connect(&accept, client, server);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Proxy { port, shared }
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A `redis://` URL through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Closes every connection through the proxy and refuses new ones
    /// until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::Relaxed);
        for stream in self.shared.open.lock().expect("proxy lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::Relaxed);
    }

    /// From now on, what the server sends reaches the client `delay` after
    /// the proxy read it (a round trip of `delay` to a distant server).
    /// Replies keep their order and their spacing: two replies sent
    /// together arrive together, one `delay` later, so requests a client
    /// pipelines cost it one round trip, and requests it makes one after
    /// the other cost one each.
    pub fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.delay_us.store(us, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        self.cut();
    }
}

/// Copies both ways between `client` and `server` until either closes.
fn connect(shared: &Arc<Shared>, client: TcpStream, server: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    {
        let mut open = shared.open.lock().expect("proxy lock");
        for s in [&client, &server] {
            if let Ok(s) = s.try_clone() {
                open.push(s);
            }
        }
    }
    thread::spawn(move || pipe(client, server));
    let shared = shared.clone();
    thread::spawn(move || pipe_delayed(server2, client2, &shared));
}

/// At most this many chunks (of up to 16 KiB) wait in a delayed pipe: past
/// it the proxy stops reading, and the server feels the client's pace as it
/// would without the proxy.
const DELAYED_CHUNKS: usize = 64;

/// [`pipe`], with each chunk held until its arrival plus the proxy's delay
/// (by a second thread, so a chunk read meanwhile is not delayed twice).
fn pipe_delayed(mut from: TcpStream, to: TcpStream, shared: &Shared) {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(DELAYED_CHUNKS);
    let Ok(to2) = to.try_clone() else {
        return;
    };
    let writer = thread::spawn(move || {
        let mut to = to2;
        for (due, bytes) in rx {
            thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let delay = Duration::from_micros(shared.delay_us.load(Ordering::Relaxed));
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that echoes what it reads, a byte at a time (so bytes
    /// sent together go back as separate writes).
    fn echo_server() -> SocketAddr {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap();
        thread::spawn(move || {
            for mut s in server.incoming().flatten() {
                thread::spawn(move || {
                    let mut b = [0u8; 1];
                    while let Ok(1) = s.read(&mut b) {
                        if s.write_all(&b).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        target
    }

    #[test]
    fn forwards_and_cuts() {
        let proxy = Proxy::start(echo_server());
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        proxy.cut();
        assert!(matches!(c.read(&mut b), Ok(0) | Err(_)), "cut closes");
        let mut refused = TcpStream::connect(proxy.addr()).unwrap();
        refused
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert!(
            matches!(refused.read(&mut b), Ok(0) | Err(_)),
            "cut refuses"
        );
        proxy.restore();
        let mut again = TcpStream::connect(proxy.addr()).unwrap();
        again
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        again.write_all(b"pong").unwrap();
        again.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"pong");
    }

    #[test]
    fn delays_replies_once_each() {
        let proxy = Proxy::start(echo_server());
        proxy.set_delay(Duration::from_millis(300));
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        // Three requests sent together: three replies, one delay later.
        c.write_all(b"abc").unwrap();
        let mut b = [0u8; 3];
        c.read_exact(&mut b).unwrap();
        let took = started.elapsed();
        assert_eq!(&b, b"abc");
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(
            took < Duration::from_millis(550),
            "not once per reply: {took:?}"
        );
    }
}
