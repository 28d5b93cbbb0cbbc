//! Stream negotiation rules, one module per stream role (c2s, external
//! components; s2s later).

pub mod c2s;
pub mod component;
