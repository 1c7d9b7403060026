//! End-to-end test harness for the nginx ktls module.
