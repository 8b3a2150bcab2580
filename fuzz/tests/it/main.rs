//! Every committed fuzz input through its target's check, on stable: the minimized corpus
//! (`fuzz/corpus/<target>/`) and the reproducers of fixed findings
//! (`fuzz/regressions/<target>/`), so a fixed bug that comes back fails the tests.

mod replay;
