//! Generated Rust types and tonic stubs for the p2p wire protocol (`proto/p2p.proto`).
//!
//! Byte fields are `bytes::Bytes`, so chunk data moves without copies.

#![allow(clippy::all, clippy::pedantic)]

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("p2p.v1");
}

pub use v1::*;
