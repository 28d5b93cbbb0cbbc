//! Waxwing, an XMPP server: library crate behind the `waxwing` binary and
//! the `waxwing-bench` load tool. See ARCHITECTURE.md for the map.

pub mod accounts;
pub mod admin;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod components;
pub mod config;
pub mod feature;
pub mod hashing;
pub mod iq_tracker;
pub mod metrics;
pub mod migrate;
pub mod modules;
pub mod net;
pub mod pubsub;
pub mod queue;
pub mod reload;
pub mod router;
pub mod routes;
pub mod sasl;
pub mod server;
pub mod sessions;
pub mod stanza;
pub mod storage;
pub mod stream;
pub mod throttle;
pub mod web;
pub mod xml;
