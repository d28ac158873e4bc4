//! Where guests run. WebAssembly guests execute on threads of their own, apart from the runtime
//! that serves the API, the public router and the process tier: a guest that loops until its
//! timeout competes for the CPU with the rest of Gust through the kernel's scheduler (and at a
//! lower priority, the same as process-tier workers), not by occupying the threads that answer
//! everyone else.
//!
//! Between functions, each function's guests take turns: at most one turn per guest thread is
//! held by a function at once, a turn lasts one poll (at most one epoch tick of guest code), and
//! waiting guests get the next turn in order. A function with 150 looping requests then gets the
//! same share of the guest threads as a function with one request, not 150 times more.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::PollSemaphore;

/// How much lower guest threads run than Gust's own (a nice value); the process tier's workers
/// run at the same one, so neither tier starves the other.
const GUEST_NICENESS: i32 = 10;

/// The number of guest threads: one per core.
pub fn guest_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn guest_runtime() -> &'static Runtime {
    static GUESTS: OnceLock<Runtime> = OnceLock::new();
    GUESTS.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(guest_threads())
            .thread_name("gust-guest")
            // A new guest is spawned from outside, into the runtime's shared queue; a worker
            // thread busy with guests taking turns would otherwise look there only every 61
            // polls (each up to an epoch tick), and a new request would wait behind them.
            .global_queue_interval(1)
            .on_thread_start(|| {
                // Linux keeps a nice value per thread: `0` is the calling thread.
                // SAFETY: setpriority has no memory preconditions.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, GUEST_NICENESS);
                }
            })
            .enable_all()
            .build()
            .expect("the guest runtime's threads start")
    })
}

/// A function's turns: as many as there are guest threads.
pub fn new_turns() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(guest_threads()))
}

/// Runs `guest` on the guest threads, one turn of `turns` per poll. The guest stops when the
/// returned handle is dropped (its request was answered, timed out or abandoned).
pub fn spawn<F>(guest: F, turns: Arc<Semaphore>) -> GuestTask<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    GuestTask(guest_runtime().spawn(Turns {
        inner: Box::pin(guest),
        turns: PollSemaphore::new(turns),
    }))
}

/// A guest running on the guest threads; aborted when dropped.
pub struct GuestTask<T>(JoinHandle<T>);

impl<T> Future for GuestTask<T> {
    /// `None` if the guest panicked.
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}

impl<T> Drop for GuestTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls `inner` only while holding one of its function's turns, given back after each poll.
struct Turns<F> {
    inner: Pin<Box<F>>,
    turns: PollSemaphore,
}

impl<F: Future> Future for Turns<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(_turn) = ready!(self.turns.poll_acquire(cx)) else {
            unreachable!("a function's turns are never closed");
        };
        self.inner.as_mut().poll(cx)
    }
}
