//! The kiln command: starts the platform and drives its API.
