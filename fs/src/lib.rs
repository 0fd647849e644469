//! Skiff's FUSE union filesystem.
