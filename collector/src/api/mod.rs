//! Admin API: customer monthly limits, with its own token.
