//! Client for the fencelock module (work in progress).
