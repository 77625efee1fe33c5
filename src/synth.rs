//! Synthetic test data (placeholder; being written).
