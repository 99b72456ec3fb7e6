//! Tests of the fake GHL.
