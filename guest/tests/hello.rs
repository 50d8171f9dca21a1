// hello.rs: Rust std runtime check, built with
//   rustc -O -C target-feature=+crt-static
use std::collections::HashMap;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let boxed: Box<String> = Box::new(String::from("Hello World from Rust!"));
    println!("{}", boxed);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in ["a", "b", "a"] {
        *counts.entry(w).or_insert(0) += 1;
    }
    let v: Vec<u64> = (1..=10).collect();
    println!(
        "argc={} sum={} a={}",
        args.len(),
        v.iter().sum::<u64>(),
        counts["a"]
    );
    if let Ok(name) = std::env::var("KVM_NAME") {
        println!("KVM_NAME={}", name);
    }
}
