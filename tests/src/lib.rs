//! Harness for Skiff's end-to-end tests.
