//! What every fake server shares: a listener on a free loopback port, a
//! thread that accepts connections and serves each (one after another, or
//! each on a thread of its own), the transcript of the command lines every
//! connection sent, and a way to stop. Each fake ([`crate::fake_pop3`],
//! [`crate::fake_imap`], [`crate::fake_smtp`]) only writes its protocol:
//! a function that serves one [`Connection`].

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// How a fake takes its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving {
    /// One connection at a time, in the order they arrive: a second client
    /// waits, as with a server that locks the mailbox.
    OneAtATime,
    /// Each connection on a thread of its own.
    Concurrently,
}

/// The faults a script injects, on every connection or on the first only
/// (so that a second run sees a healthy server).
#[derive(Clone, Debug)]
pub struct Faults<F> {
    pub list: Vec<F>,
    pub first_connection_only: bool,
}

impl<F> Default for Faults<F> {
    fn default() -> Faults<F> {
        Faults {
            list: Vec::new(),
            first_connection_only: false,
        }
    }
}

impl<F: Clone> Faults<F> {
    /// The faults that apply to connection `index` (counted from 0).
    pub fn for_connection(&self, index: usize) -> Vec<F> {
        if self.first_connection_only && index > 0 {
            Vec::new()
        } else {
            self.list.clone()
        }
    }
}

/// What the accept thread and the connections share with the test.
struct Shared<S> {
    state: Mutex<S>,
    /// The command lines received, one list per connection.
    sessions: Mutex<Vec<Vec<String>>>,
    stop: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that failed while a connection held the lock must still be
    // able to read what the server saw.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fake server with protocol state `S`; stops accepting when
/// dropped.
pub struct FakeServer<S> {
    addr: SocketAddr,
    shared: Arc<Shared<S>>,
}

impl<S: Send + 'static> FakeServer<S> {
    /// Listens on 127.0.0.1 on a free port and calls `serve` for every
    /// connection, from a background thread. An error from `serve` (the
    /// client went away) just ends that connection.
    pub fn start(
        state: S,
        serving: Serving,
        serve: impl Fn(&mut Connection<S>) -> io::Result<()> + Send + Sync + 'static,
    ) -> FakeServer<S> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            sessions: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        let serve = Arc::new(serve);
        thread::spawn(move || {
            for conn in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let Ok(mut conn) = Connection::new(conn, accepting.clone()) else {
                    continue;
                };
                match serving {
                    Serving::OneAtATime => {
                        let _ = serve(&mut conn);
                    }
                    Serving::Concurrently => {
                        let serve = serve.clone();
                        thread::spawn(move || {
                            let _ = serve(&mut conn);
                        });
                    }
                }
            }
        });
        FakeServer { addr, shared }
    }
}

impl<S> FakeServer<S> {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The protocol state (mailbox, what was accepted, …).
    pub fn state(&self) -> MutexGuard<'_, S> {
        lock(&self.shared.state)
    }

    /// The command lines received, one list per connection.
    pub fn sessions(&self) -> Vec<Vec<String>> {
        lock(&self.shared.sessions).clone()
    }

    /// Every command line received, all connections.
    pub fn transcript(&self) -> Vec<String> {
        lock(&self.shared.sessions).concat()
    }
}

impl<S> Drop for FakeServer<S> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop; a hanging connection notices `stop` by itself.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// One client connection, as a fake's protocol code sees it.
pub struct Connection<S> {
    /// The connection's number, from 0, in the order of arrival.
    pub index: usize,
    pub reader: BufReader<TcpStream>,
    pub out: TcpStream,
    shared: Arc<Shared<S>>,
}

impl<S> Connection<S> {
    fn new(socket: TcpStream, shared: Arc<Shared<S>>) -> io::Result<Connection<S>> {
        socket.set_nodelay(true)?;
        socket.set_read_timeout(Some(Duration::from_secs(60)))?;
        let index = {
            let mut sessions = lock(&shared.sessions);
            sessions.push(Vec::new());
            sessions.len() - 1
        };
        Ok(Connection {
            index,
            reader: BufReader::new(socket.try_clone()?),
            out: socket,
            shared,
        })
    }

    /// The server's protocol state.
    pub fn state(&self) -> MutexGuard<'_, S> {
        lock(&self.shared.state)
    }

    /// Adds a command line to this connection's transcript.
    pub fn record(&self, line: &str) {
        lock(&self.shared.sessions)[self.index].push(line.to_owned());
    }

    /// Whether the server is being dropped.
    pub fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    pub fn send(&mut self, text: &str) -> io::Result<()> {
        self.out.write_all(text.as_bytes())
    }

    /// Whether client bytes are already waiting (buffered or in the socket).
    pub fn more_waiting(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let socket = self.reader.get_ref();
        let _ = socket.set_nonblocking(true);
        let waiting = matches!(socket.peek(&mut [0]), Ok(n) if n > 0);
        let _ = socket.set_nonblocking(false);
        waiting
    }

    /// Stops answering and reads (ignoring it) whatever the client sends
    /// until it goes away or the server is stopped.
    pub fn hang(&mut self) -> io::Result<()> {
        self.out
            .set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut buf = [0; 4096];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.stopped() {
                        return Ok(());
                    }
                }
                Err(_) => return Ok(()),
            }
        }
    }

    /// Closes our side cleanly (everything sent arrives, then EOF), then
    /// hangs.
    pub fn cut(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.shutdown(Shutdown::Write)?;
        self.hang()
    }
}
