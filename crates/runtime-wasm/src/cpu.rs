//! CPU time a guest spends, measured as the thread CPU clock around each poll of its future:
//! the guest runs only inside those polls, on whichever worker thread polls it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

fn thread_cpu_now() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Nanoseconds of CPU, added to by every [`CpuTimed`] future that shares it.
#[derive(Clone, Default)]
pub struct CpuMeter(Arc<AtomicU64>);

impl CpuMeter {
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    pub fn time<F: Future>(&self, future: F) -> CpuTimed<F> {
        CpuTimed {
            inner: Box::pin(future),
            meter: self.clone(),
        }
    }
}

pub struct CpuTimed<F> {
    inner: Pin<Box<F>>,
    meter: CpuMeter,
}

impl<F: Future> Future for CpuTimed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = thread_cpu_now();
        let result = self.inner.as_mut().poll(cx);
        let spent = thread_cpu_now().saturating_sub(started);
        self.meter
            .0
            .fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn busy_polls_are_counted_and_waiting_is_not() {
        let meter = CpuMeter::default();
        meter
            .time(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
            })
            .await;
        assert!(
            meter.total() < Duration::from_millis(20),
            "{:?}",
            meter.total()
        );
        // Busy until this thread has used 20 ms of CPU, however long that takes on a busy
        // machine.
        meter
            .time(async {
                let started = thread_cpu_now();
                let mut x = 0u64;
                while thread_cpu_now() - started < Duration::from_millis(20) {
                    x = x.wrapping_add(std::hint::black_box(1));
                }
                x
            })
            .await;
        assert!(
            meter.total() >= Duration::from_millis(20),
            "{:?}",
            meter.total()
        );
    }
}
