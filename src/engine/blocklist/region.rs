//! A zeroed array in anonymous memory advised for transparent huge pages.
//!
//! A 10 M-entry table's key array is ~110 MB: with 4 KiB pages nearly every
//! lookup misses the TLB as well as the cache, and the page walk is a
//! second dependent miss. Linux backs an `MADV_HUGEPAGE` region with 2 MiB
//! pages (where `transparent_hugepage` is `madvise` or `always`), which
//! takes the walk off most lookups. Small arrays stay on the heap.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// Arrays smaller than this stay on the heap: a huge page would be mostly empty.
const MAP_FROM_BYTES: usize = 4 << 20;

pub(super) enum Region<T> {
    Heap(Box<[T]>),
    Mapped {
        map: memmap2::MmapMut,
        len: usize,
        _t: PhantomData<T>,
    },
}

impl<T: bytemuck::Pod> Region<T> {
    /// `len` zeroed elements (all-zero bits must be the empty value).
    pub(super) fn zeroed(len: usize) -> Region<T> {
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        if bytes >= MAP_FROM_BYTES {
            if let Ok(map) = memmap2::MmapMut::map_anon(bytes) {
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                return Region::Mapped {
                    map,
                    len,
                    _t: PhantomData,
                };
            }
        }
        Region::Heap(vec![T::zeroed(); len].into_boxed_slice())
    }
}

impl<T: bytemuck::Pod> Deref for Region<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Region::Heap(b) => b,
            Region::Mapped { map, len, .. } => {
                bytemuck::cast_slice(&map[..len * std::mem::size_of::<T>()])
            }
        }
    }
}

impl<T: bytemuck::Pod> DerefMut for Region<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Region::Heap(b) => b,
            Region::Mapped { map, len, .. } => {
                bytemuck::cast_slice_mut(&mut map[..*len * std::mem::size_of::<T>()])
            }
        }
    }
}

impl<T> std::fmt::Debug for Region<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Region::Heap(b) => write!(f, "Region::Heap({} elements)", b.len()),
            Region::Mapped { len, .. } => write!(f, "Region::Mapped({len} elements)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_regions_read_back_what_was_written() {
        for len in [0usize, 10, 1 << 20] {
            let mut r: Region<u64> = Region::zeroed(len);
            assert_eq!(r.len(), len);
            assert!(r.iter().all(|v| *v == 0));
            for (i, v) in r.iter_mut().enumerate() {
                *v = i as u64;
            }
            assert!(r.iter().enumerate().all(|(i, v)| *v == i as u64));
        }
        assert!(matches!(
            Region::<u64>::zeroed(1 << 20),
            Region::Mapped { .. }
        ));
    }
}
