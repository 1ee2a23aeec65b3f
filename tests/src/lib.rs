pub mod chaos;
pub mod harness;
pub mod oracle;
pub mod postgres;
pub mod sim;
pub mod sink;
pub mod webhook;
