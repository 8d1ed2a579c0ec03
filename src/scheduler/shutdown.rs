//! What every daemon task listens for besides its own work: that the
//! daemon is stopping (SIGTERM, SIGINT, a reload ending this generation),
//! and that it should poll now (SIGUSR1). One small type, handed to each
//! task, as mini-redis's `Shutdown` is.

use std::time::Duration;

use tokio::sync::watch;

#[derive(Clone)]
pub(super) struct Shutdown {
    stop: watch::Receiver<bool>,
    wake: watch::Receiver<u64>,
}

impl Shutdown {
    pub(super) fn new(stop: watch::Receiver<bool>, wake: watch::Receiver<u64>) -> Shutdown {
        Shutdown { stop, wake }
    }

    pub(super) fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Completes when the daemon stops (or whatever stops it is gone).
    pub(super) async fn stopped(&mut self) {
        until_stopped(&mut self.stop).await;
    }

    /// Completes when the daemon stops or is told to poll now.
    pub(super) async fn stopped_or_woken(&mut self) {
        tokio::select! {
            () = until_stopped(&mut self.stop) => {},
            () = until_woken(&mut self.wake) => {},
        }
    }

    /// Waits `delay`, or less if told to poll now; false if told to stop.
    pub(super) async fn sleep(&mut self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = until_woken(&mut self.wake) => true,
            () = until_stopped(&mut self.stop) => false,
        }
    }

    /// Takes note of the latest "poll now", which another handle (a clone)
    /// already acted on.
    pub(super) fn mark_woken(&mut self) {
        self.wake.borrow_and_update();
    }
}

async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Completes at the next "poll now"; never if its sender is gone.
async fn until_woken(wake: &mut watch::Receiver<u64>) {
    if wake.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
