//! mkfs engine.
