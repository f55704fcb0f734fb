//! Integration tests: the real binary against mock upstreams on 127.0.0.1.

mod harness;

mod affinity;
mod bedrock;
mod cli;
mod clients;
mod corners;
mod failure_model;
mod fleet;
mod hardening;
mod page;
mod pool;
mod probe_keys;
mod send;
mod serve;
mod trust;
