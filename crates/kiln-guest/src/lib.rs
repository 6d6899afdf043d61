//! The guest agent that runs as PID 1 inside every machine, its wire protocol and its client.
