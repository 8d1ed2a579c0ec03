//! Shared helpers for the integration tests.
pub mod dovecot;
pub mod fake_imap;
pub mod fake_pop3;
pub mod fake_smtp;
pub mod postfix;
pub mod run;

use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// For the fake servers: stops answering and reads (ignoring it) whatever
/// the client sends until it goes away or the server is stopped.
pub fn hang(reader: &mut impl Read, socket: &TcpStream, stop: &AtomicBool) -> io::Result<()> {
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = [0; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
            }
            Err(_) => return Ok(()),
        }
    }
}
