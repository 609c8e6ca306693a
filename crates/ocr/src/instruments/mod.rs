//! Instruments that stand in for the device behind the seam ([`crate::model::ModelRunner`]):
//! the recorded and simulated device ([`device`], `bench ocr --simulate`) and the test fault
//! plan ([`fault`], the worker's hidden `--test-engine-fault`). The engine wraps its runners in
//! them; nothing else depends on them.

pub mod device;
pub(crate) mod fault;
