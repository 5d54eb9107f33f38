//! Reading guest memory into the umem. The guest may write its buffers at
//! any time, so they are never borrowed as Rust slices: vm-memory copies
//! out of them with volatile-safe raw copies (`VolatileSlice::copy_to`),
//! straight into the umem frame, the one copy of a transmitted frame.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Whether `addr..addr+len` is all guest memory (so [`copy`] of it
/// succeeds).
pub fn in_memory(mem: &GuestMemoryMmap<()>, addr: GuestAddress, len: usize) -> bool {
    GuestMemoryBackend::check_range(mem, addr, len)
}

/// Copy `buf.len()` bytes of guest memory at `addr` into `buf`; the number
/// of bytes copied, 0 if the range is not all guest memory (or `buf` is
/// empty).
pub fn copy(mem: &GuestMemoryMmap<()>, addr: GuestAddress, buf: &mut [u8]) -> usize {
    match mem.read_slice(buf, addr) {
        Ok(()) => buf.len(),
        Err(_) => 0,
    }
}
