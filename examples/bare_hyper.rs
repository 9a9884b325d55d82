//! Placeholder replaced by the issue-7 bare hyper server.
fn main() {}
