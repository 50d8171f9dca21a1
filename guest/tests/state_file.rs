// state_file.rs: the state file from Rust's std::fs (openat, statx/fstat, read, write, lseek),
// in main() (writable). Prints what it read back; tests/all/storage.rs runs it with `edgevm run`.
use std::io::{Read, Seek, SeekFrom, Write};

fn main() {
    let p = std::env::var("KVM_STATE").expect("KVM_STATE");
    let before = std::fs::read_to_string(&p).unwrap_or_else(|e| format!("({:?})", e.kind()));
    std::fs::write(&p, b"from rust").unwrap();
    let s = std::fs::read_to_string(&p).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"+more").unwrap();
    let mut f = std::fs::File::open("/state").unwrap();
    f.seek(SeekFrom::Start(5)).unwrap();
    let mut tail = String::new();
    f.read_to_string(&mut tail).unwrap();
    let m = std::fs::metadata("state").unwrap();
    let other = std::fs::read("/etc/passwd").err().map(|e| e.kind());
    println!(
        "before={before} wrote={s} tail={tail} len={} file={} other={other:?}",
        m.len(),
        m.is_file()
    );
}
