//! edgevm integration tests: one test binary (link time matters on 2 cores). Every test here
//! runs real guests — C, C++ and Rust programs from guest/, compiled by guest/build.sh during
//! the test run — in real KVM VMs. Without /dev/kvm these tests fail and say so.

mod admin;
mod bad_input;
mod bench;
mod call_semantics;
mod clients;
mod common;
mod config_delivery;
mod cpu;
mod debug;
mod deploy;
mod event_loop;
mod faults;
mod fetch;
mod files;
mod golang;
mod harness;
mod hostile;
mod inline;
mod memlayout;
mod package;
mod privilege;
mod readiness;
mod regex;
mod reset;
mod robustness;
mod routes;
mod run_cmd;
mod run_limits;
mod scale;
mod serve;
mod smp;
mod snapshot;
mod soak;
mod sockets;
mod storage;
mod storage_inline;
mod storage_tasks;
mod stream;
mod stream_post;
mod tcp_server;
mod threads;
mod ux;
mod varnish;
mod wx;
