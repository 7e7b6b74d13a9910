//! Admission control for the in-line API: at most `max_concurrency` calls
//! are scored at once, at most `max_queue` wait for a slot, and a waiting
//! call gives up before its deadline. Whatever is refused is *shed*: the
//! caller answers at once with the configured overload policy. There is no
//! unbounded queue anywhere: a call either holds a permit, waits in the
//! bounded queue, or is answered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError};

/// Why a call was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The concurrency bound and the queue were full.
    Overload,
    /// The deadline came (or was too close) while the call waited.
    Deadline,
}

impl Shed {
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::Overload => "overload",
            Shed::Deadline => "deadline",
        }
    }
}

/// A call's time budget. `give_up_at` leaves a margin before the caller's
/// own deadline (a fifth of the budget, at most 50 ms) so that the shed
/// answer reaches the caller before it stops listening. The caller's clock
/// started before the server's (its own queue, the connection, the
/// transport's decoding): in a burst of 1,000 gRPC calls from 200 callers
/// (ghz, 100 ms deadline) the answers shed with a tenth's margin reached
/// the callers 96-118 ms after they started, and half of them too late.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    pub give_up_at: Instant,
}

impl Deadline {
    pub fn from_budget(start: Instant, budget: Duration) -> Deadline {
        let margin = (budget / 5).min(Duration::from_millis(50));
        Deadline {
            at: start + budget,
            give_up_at: start + (budget - margin),
        }
    }
}

/// The concurrency bound and its bounded queue.
pub struct Admission {
    slots: Semaphore,
    waiting: AtomicUsize,
    max_queue: usize,
}

/// Decrements the waiting count however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(max_concurrency: usize, max_queue: usize) -> Admission {
        Admission {
            slots: Semaphore::new(max_concurrency),
            waiting: AtomicUsize::new(0),
            max_queue,
        }
    }

    /// A scoring slot, or why not. Returns at once when a slot is free or
    /// the queue is full; otherwise waits (FIFO) until `deadline.give_up_at`.
    pub async fn admit(&self, deadline: &Deadline) -> Result<SemaphorePermit<'_>, Shed> {
        if Instant::now() >= deadline.give_up_at {
            return Err(Shed::Deadline);
        }
        match self.slots.try_acquire() {
            Ok(p) => return Ok(p),
            Err(TryAcquireError::Closed) => return Err(Shed::Overload),
            Err(TryAcquireError::NoPermits) => {}
        }
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if before >= self.max_queue {
            return Err(Shed::Overload);
        }
        match tokio::time::timeout_at(deadline.give_up_at.into(), self.slots.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Shed::Overload),
            Err(_) => Err(Shed::Deadline),
        }
    }

    /// Calls waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_slots_and_queue_shed_at_once() {
        let a = Admission::new(1, 1);
        let d = Deadline::from_budget(Instant::now(), Duration::from_secs(5));
        let held = a.admit(&d).await.unwrap();
        // One waits in the queue...
        let waiter = a.admit(&d);
        tokio::pin!(waiter);
        assert!(futures::poll!(&mut waiter).is_pending());
        assert_eq!(a.waiting(), 1);
        // ...the next finds the queue full and is shed without waiting.
        let t = Instant::now();
        assert_eq!(a.admit(&d).await.unwrap_err(), Shed::Overload);
        assert!(t.elapsed() < Duration::from_millis(50));
        drop(held);
        assert!(waiter.await.is_ok());
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test]
    async fn a_queued_call_gives_up_before_its_deadline() {
        let a = Admission::new(1, 10);
        let long = Deadline::from_budget(Instant::now(), Duration::from_secs(5));
        let _held = a.admit(&long).await.unwrap();
        let start = Instant::now();
        let d = Deadline::from_budget(start, Duration::from_millis(100));
        assert_eq!(a.admit(&d).await.unwrap_err(), Shed::Deadline);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(80), "{waited:?}");
        assert!(
            waited < Duration::from_millis(100) + Duration::from_millis(40),
            "{waited:?}"
        );
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test]
    async fn an_expired_budget_is_shed_even_with_free_slots() {
        let a = Admission::new(4, 4);
        let d = Deadline::from_budget(Instant::now(), Duration::ZERO);
        assert_eq!(a.admit(&d).await.unwrap_err(), Shed::Deadline);
    }
}
