//! HTTP server plumbing shared by the platform's servers: the API and the edge.

pub mod linger;
