//! The integration suite, one test crate (one link, one copy of `support`). Each module is one
//! area of the contract, driven through the real router or the real binary against a fake Gcore
//! upstream on loopback (`support`).
#![allow(unreachable_pub, missing_docs)]

mod support;

mod cli;
mod drift;
mod forwarded;
mod harness;
mod hostile;
mod keys;
mod observability;
mod prop_parsers;
mod prop_redact;
mod rate_limits;
mod redaction;
mod replicas;
mod resilience;
mod safe_defaults;
mod serving;
mod shipped_config;
mod tls;
mod tls_roots;
mod tracing;
