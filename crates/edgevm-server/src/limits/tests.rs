//! Unit tests of the client limits.

use super::body::TRIM_AFTER;
use super::*;
use std::time::Duration;

// tokio's clock: paused in tests and in the HTTP fuzz target, so timeouts fire at once there.
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn the_body_budget_makes_bodies_wait_then_refuses_them() {
    let b = BodyBudget::new(100);
    let mut one = b.lease();
    assert!(one.grow(60, Instant::now() + BUDGET_WAIT).await);
    let mut two = b.lease();
    assert!(two.grow(40, Instant::now() + BUDGET_WAIT).await);
    // Full: waits BUDGET_WAIT (paused clock) and gives up.
    let t0 = Instant::now();
    assert!(!two.grow(1, Instant::now() + BUDGET_WAIT).await);
    assert!(t0.elapsed() >= BUDGET_WAIT);
    assert_eq!(b.used(), 100);
    // Room made while waiting lets it in.
    let waiter = tokio::spawn(async move {
        let ok = two.grow(50, Instant::now() + BUDGET_WAIT).await;
        (ok, two)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(one);
    let (ok, two) = waiter.await.unwrap();
    assert!(ok);
    assert_eq!(b.used(), 90);
    drop(two);
    assert_eq!(b.used(), 0);
    // A body alone may take more than the whole budget.
    let mut big = b.lease();
    assert!(big.grow(150, Instant::now()).await);
    assert!(big.grow(150, Instant::now()).await);
    let mut other = b.lease();
    assert!(!other.grow(1, Instant::now()).await);
    drop(big);
    assert_eq!(b.used(), 0);
}

#[test]
fn memory_goes_back_after_a_burst() {
    let b = BodyBudget::new(64 << 20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut l = b.lease();
        assert!(l.grow(TRIM_AFTER, Instant::now()).await);
        let mut small = b.lease();
        assert!(small.grow(10, Instant::now()).await);
        drop(l);
        // Something still buffered: not yet.
        assert_eq!(b.trims(), 0);
        drop(small);
        assert_eq!(b.trims(), 1);
        // A small burst does not trim.
        let mut l = b.lease();
        assert!(l.grow(1000, Instant::now()).await);
        drop(l);
        assert_eq!(b.trims(), 1);
    });
}

#[test]
fn connections_fit_in_the_fd_limit() {
    assert_eq!(connections_for_fds(10_000, 1024), 768);
    assert_eq!(connections_for_fds(100, 1024), 100);
    assert_eq!(connections_for_fds(10_000, u64::MAX), 10_000);
    assert_eq!(connections_for_fds(10_000, 100), 16);
    assert!(raise_fd_limit() >= 16);
}
