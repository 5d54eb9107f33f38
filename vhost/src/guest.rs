//! Borrowing guest memory as byte slices, so a guest's transmit buffer is
//! copied once, straight into the umem (the only `unsafe` of this crate).

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// `len` bytes of guest memory at `addr` as a byte slice that lives as long
/// as the borrow of `mem`, or `None` if the range is not inside one region
/// of guest memory.
pub fn slice(mem: &GuestMemoryMmap<()>, addr: GuestAddress, len: usize) -> Option<&[u8]> {
    if len == 0 {
        return Some(&[]);
    }
    let vs = mem.get_slice(addr, len).ok()?;
    let guard = vs.ptr_guard();
    let ptr = guard.as_ptr();
    // SAFETY: `get_slice` checked that `addr..addr+len` lies inside one
    // mapped region of `mem`; the mapping stays until `mem` (a snapshot held
    // by the caller's `GuestMemoryAtomic` guard) is dropped, which the
    // returned lifetime ties to. The guest may write the bytes concurrently;
    // every byte value is a valid `u8`, the slice is only read (copied into
    // the umem), and a guest that changes its buffer while transmitting it
    // only garbles its own frame.
    Some(unsafe { std::slice::from_raw_parts(ptr, len) })
}
