pub mod chaos;
pub mod harness;
pub mod sim;
pub mod sink;
