//! Stream negotiation rules, one module per stream role (c2s, external
//! components, server-to-server).

pub mod c2s;
pub mod component;
pub mod s2s;
