//! The limits store: per-customer monthly spending limits, durable in the data directory.
