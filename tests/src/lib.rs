pub mod chaos;
pub mod harness;
pub mod postgres;
pub mod sim;
pub mod sink;
