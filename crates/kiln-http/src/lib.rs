//! HTTP server plumbing shared by the platform's servers: the API, the S3 endpoint and the edge.

pub mod linger;
