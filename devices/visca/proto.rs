//! Protocol codec (in progress).
