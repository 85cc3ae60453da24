//! Test harness: nodes on 127.0.0.1:0 (in-process), on one real Redis or on
//! one in-memory network, and a WebSocket client that speaks the protocol.
//!
//! - `nodes`: test configs, [`TestNode`], [`Pair`] (on Redis and on memory)
//! - `client`: the protocol [`Client`]
//! - `http`: the minimal HTTP client, [`WAIT`] and [`eventually`]
//! - `process`: [`NodeProcess`], the real binary
// Each test crate uses a part of the harness.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

mod client;
mod http;
mod nodes;
mod process;

pub use client::*;
pub use http::*;
pub use nodes::*;
pub use process::*;
