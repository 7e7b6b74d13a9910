//! Software prefetch: asks the CPU to start loading a cache line that will
//! be needed soon, so that the misses of a payment's entities are in flight
//! together rather than one after the other (see [`super::table`]).
//!
//! The one `unsafe` of the crate: `_mm_prefetch` is a hint that never
//! faults and reads nothing the program sees, whatever the address (stale,
//! freed or unmapped), but as a `#[target_feature]` intrinsic it can only be
//! called in an `unsafe` block. Elsewhere than x86-64 it does nothing.

/// Prefetches the cache lines of the `len` bytes at address `at`.
#[inline(always)]
pub(super) fn lines(at: usize, len: usize) {
    let mut line = at & !63;
    let end = at + len.max(1);
    while line < end {
        one(line);
        line += 64;
    }
}

/// Prefetches every part an entity holds on the heap (each `(address,
/// length)` a `spilled()` gave; `None` for a part kept inline).
#[inline(always)]
pub(super) fn spilled<const N: usize>(parts: [Option<(usize, usize)>; N]) {
    for (at, len) in parts.into_iter().flatten() {
        lines(at, len);
    }
}

#[inline(always)]
#[allow(unsafe_code)]
fn one(at: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not access memory architecturally: it cannot
    // fault or change any value, for any address; SSE is part of x86-64.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
