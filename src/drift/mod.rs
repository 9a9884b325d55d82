//! Shape drift: which field paths an upstream answer has that the route's baseline has not.
//!
//! A route's known shape is the set of field paths of a baseline sample (object keys by name,
//! array elements as `[*]`: `$.users[*].email`). [`shape`] is the pure part: extracting paths,
//! comparing an answer with a [`Shape`], and dropping what is new from a document. [`seen`] is
//! the per-process record of the new paths met so far (the WARN-once bookkeeping and
//! `GET /admin/schema`). Where the check runs (once per upstream fetch, in `proxy::miss`), what
//! a profile does with new paths (`redact`) and where the baseline file is read (`config`)
//! live elsewhere; this room imports nothing of the gateway.

pub(crate) mod seen;
pub mod shape;

pub use shape::{paths, NewFields, Shape};

/// The documented Gcore answer to `GET /iam/clients/me` (`ClientBase`, every documented field,
/// every service key; values fabricated): the built-in baseline of that route. The same file
/// ships as `config/baselines/clients_me.json` for operators to copy and extend.
pub const CLIENTS_ME_BASELINE: &str = include_str!("../../config/baselines/clients_me.json");

/// The route whose baseline is built in.
pub const CLIENTS_ME_ROUTE: &str = "/iam/clients/me";
