//! threads.rs: Rust std threads inside a VM (tests/all/threads.rs): spawned threads with a
//! channel, a Mutex/Condvar hand-off, atomics, thread::sleep and scoped threads; prints one
//! line per part and "threads ok" at the end.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

fn main() {
    // Workers send results through a channel.
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let tx = tx.clone();
            thread::spawn(move || {
                let s: u64 = (0..10_000u64).map(|k| k * i).sum();
                thread::yield_now();
                tx.send((i, s)).unwrap();
                i
            })
        })
        .collect();
    drop(tx);
    let mut got: Vec<(u64, u64)> = rx.iter().collect();
    got.sort();
    let joined: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    println!("channel: {} results, joined {}", got.len(), joined);

    // Ping-pong through a Mutex and a Condvar.
    let pair = Arc::new((Mutex::new(0u32), Condvar::new()));
    let p2 = Arc::clone(&pair);
    let t = thread::spawn(move || {
        let (m, c) = &*p2;
        for _ in 0..50 {
            let mut g = m.lock().unwrap();
            while *g % 2 == 0 {
                g = c.wait(g).unwrap();
            }
            *g += 1;
            c.notify_one();
        }
    });
    {
        let (m, c) = &*pair;
        for _ in 0..50 {
            let mut g = m.lock().unwrap();
            while *g % 2 == 1 {
                g = c.wait(g).unwrap();
            }
            *g += 1;
            c.notify_one();
        }
        let g = m.lock().unwrap();
        let g = c.wait_while(g, |v| *v < 100).unwrap();
        println!("condvar: {}", *g);
    }
    t.join().unwrap();

    // Sleeping threads let the others run.
    let n = Arc::new(AtomicUsize::new(0));
    let sleepers: Vec<_> = (0..3)
        .map(|_| {
            let n = Arc::clone(&n);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(20));
                n.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for s in sleepers {
        s.join().unwrap();
    }
    println!("sleep: {} woke", n.load(Ordering::SeqCst));

    // Scoped threads borrowing the stack.
    let data = [1u64, 2, 3, 4, 5, 6, 7, 8];
    let total = AtomicUsize::new(0);
    thread::scope(|s| {
        for chunk in data.chunks(2) {
            let total = &total;
            s.spawn(move || {
                total.fetch_add(chunk.iter().sum::<u64>() as usize, Ordering::SeqCst);
            });
        }
    });
    println!("scope: {}", total.load(Ordering::SeqCst));
    println!("threads ok");
}
