//! The pieces of the `p2p` binary that are more than flag parsing: running a
//! tracker or a node, the node's interactive shell, output formats and the
//! demo. `main.rs` parses flags and calls these.

pub mod daemon;
pub mod demo;
pub mod output;
pub mod shell;
