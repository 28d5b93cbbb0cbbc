//! Stream negotiation rules, one module per stream role (c2s now; s2s and components later).

pub mod c2s;
