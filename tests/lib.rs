//! Cross-crate end-to-end test helpers live in `tests/`.
