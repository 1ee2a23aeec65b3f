//! Reference data: thresholds per key, weekday and slot from a CSV file.
