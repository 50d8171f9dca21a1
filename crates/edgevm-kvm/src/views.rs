//! Typed views of a program's guest memory, one type per role (docs/DESIGN.md, "Memory"):
//!
//! * [`MainMemory`]: the memory a main VM boots in (the memfd mapped shared). It becomes the
//!   frozen image with [`MainMemory::freeze`]; it can never be discarded or reset.
//! * [`FrozenImage`]: the memory of a program frozen at `wait_for_requests()`, read-only from
//!   then on: request VMs are forked from it ([`FrozenImage::fork`]) and reset to it.
//! * [`PrivateView`]: a request VM's copy-on-write view; only it can drop or restore pages.
//!
//! All three give read access through [`GuestMemory`]; [`MainMemory`] and [`PrivateView`]
//! also write access (a VM runs in them). Dropping pages of the main memory or writing to the
//! image is a compile error, not a runtime check:
//!
//! ```compile_fail
//! let mut main = edgevm_kvm::MainMemory::new(2 << 20).unwrap();
//! main.discard_private().unwrap(); // only a PrivateView can drop its pages
//! ```
//!
//! ```compile_fail
//! let mut image = edgevm_kvm::MainMemory::new(2 << 20).unwrap().freeze();
//! image.write(0x1000, b"x").unwrap(); // the frozen image is read-only
//! ```
//!
//! ```
//! let image = edgevm_kvm::MainMemory::new(2 << 20).unwrap().freeze();
//! let mut view = image.fork(2 << 20).unwrap();
//! view.write(0x1000, b"x").unwrap();
//! view.discard_private().unwrap();
//! ```

use std::ops::{Deref, DerefMut};

use crate::memory::{GuestMemory, MemError, Reservation};
use crate::PageSet;

/// Memory a VM can run in: [`MainMemory`] or [`PrivateView`].
pub trait MemoryView: DerefMut<Target = GuestMemory> + Send + 'static {}

/// A main VM's memory: a fresh memfd mapped shared.
pub struct MainMemory(GuestMemory);

impl MainMemory {
    /// A fresh, zeroed memory of `size` bytes (a multiple of 2 MiB).
    pub fn new(size: usize) -> Result<Self, MemError> {
        GuestMemory::new_shared(size).map(MainMemory)
    }

    /// The main VM is gone: its memory becomes the program's read-only image.
    pub fn freeze(self) -> FrozenImage {
        FrozenImage(self.0)
    }
}

/// The frozen image of a program: forked by request VMs, never written again.
pub struct FrozenImage(GuestMemory);

impl FrozenImage {
    /// A copy-on-write view for a request VM: pages below `shared_from` are private (first
    /// write copies), pages from `shared_from` up are shared with every view (the
    /// shared-memory area).
    pub fn fork(&self, shared_from: usize) -> Result<PrivateView, MemError> {
        self.0.fork_private(shared_from, None).map(PrivateView)
    }

    /// [`FrozenImage::fork`] into a reserved address range (see [`Reservation`]).
    pub(crate) fn fork_at(
        &self,
        shared_from: usize,
        at: Reservation,
    ) -> Result<PrivateView, MemError> {
        self.0.fork_private(shared_from, Some(at)).map(PrivateView)
    }
}

/// A request VM's copy-on-write view of a [`FrozenImage`].
pub struct PrivateView(GuestMemory);

impl PrivateView {
    /// Whether guest page `page` holds the same bytes here as in `image`.
    pub fn page_same_as(&self, image: &FrozenImage, page: usize) -> bool {
        self.0.page_same_as(&image.0, page)
    }

    /// Reset the pages the guest or the host wrote since the last reset
    /// ([`GuestMemory::discard_pages`] says how). Returns (pages copied, pages dropped).
    pub fn reset_pages(
        &mut self,
        image: &FrozenImage,
        dirty: &PageSet,
        hot: std::ops::Range<u64>,
        copy: &PageSet,
        unchanged: &mut Vec<usize>,
    ) -> Result<(usize, usize), MemError> {
        self.0.discard_pages(&image.0, dirty, hot, copy, unchanged)
    }

    /// Drop every private page: the view reads the image again and its memory is given back.
    pub fn discard_private(&mut self) -> Result<(), MemError> {
        self.0.discard_private()
    }
}

macro_rules! view {
    ($t:ty, mut) => {
        view!($t);
        impl DerefMut for $t {
            fn deref_mut(&mut self) -> &mut GuestMemory {
                &mut self.0
            }
        }
        impl MemoryView for $t {}
    };
    ($t:ty) => {
        impl Deref for $t {
            type Target = GuestMemory;
            fn deref(&self) -> &GuestMemory {
                &self.0
            }
        }
    };
}
view!(MainMemory, mut);
view!(FrozenImage);
view!(PrivateView, mut);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_views_copy_on_write_and_restore() {
        let mut main = MainMemory::new(4 << 20).unwrap();
        main.write(0x1000, b"frozen").unwrap();
        main.write((2 << 20) + 8, b"shm").unwrap();
        let image = main.freeze();
        let mut a = image.fork(2 << 20).unwrap();
        let mut b = image.fork(2 << 20).unwrap();
        a.write(0x1000, b"AAAAAA").unwrap();
        a.write((2 << 20) + 8, b"SHM").unwrap();
        let mut buf = [0u8; 6];
        b.read(0x1000, &mut buf).unwrap();
        assert_eq!(&buf, b"frozen");
        let mut s = [0u8; 3];
        b.read((2 << 20) + 8, &mut s).unwrap();
        assert_eq!(&s, b"SHM", "shared area is shared");
        assert!(!a.page_same_as(&image, 1));
        let none = PageSet::new();
        let n = a.reset_pages(&image, &none, 0..u64::MAX, &none, &mut Vec::new());
        assert_eq!(
            n,
            Ok((1, 0)),
            "only the host-written private page is restored"
        );
        a.read(0x1000, &mut buf).unwrap();
        assert_eq!(&buf, b"frozen");
        assert!(a.page_same_as(&image, 1));
        b.write(0x3000, b"x").unwrap();
        b.discard_private().unwrap();
        let mut x = [0u8; 1];
        b.read(0x3000, &mut x).unwrap();
        assert_eq!(x[0], 0);
    }

    #[test]
    fn copies_across_the_start_of_the_shared_area_see_both_parts() {
        let image = MainMemory::new(4 << 20).unwrap().freeze();
        let mut a = image.fork(2 << 20).unwrap();
        let b = image.fork(2 << 20).unwrap();
        // Four private bytes, four shared ones, in one write.
        let at = (2 << 20) - 4;
        a.write(at, b"privSHAR").unwrap();
        let mut both = [0u8; 8];
        a.read(at, &mut both).unwrap();
        assert_eq!(&both, b"privSHAR");
        b.read(at, &mut both).unwrap();
        assert_eq!(
            &both, b"\0\0\0\0SHAR",
            "only the shared part is seen by another view"
        );
    }

    /// A memfd of `pages` pages, page `i` filled with byte `b'a' + i`.
    fn file_of(pages: usize) -> std::sync::Arc<std::os::fd::OwnedFd> {
        use std::io::Write;
        let fd =
            nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
        let mut f = std::fs::File::from(fd);
        for i in 0..pages {
            f.write_all(&[b'a' + i as u8; crate::PAGE_SIZE]).unwrap();
        }
        std::sync::Arc::new(std::os::fd::OwnedFd::from(f))
    }

    #[test]
    fn mapped_files_are_shared_copied_on_write_and_restored_by_resets() {
        let file = file_of(4);
        let mut main = MainMemory::new(4 << 20).unwrap();
        main.write(0x10000, b"before").unwrap();
        main.map_file(0x10000, 0x3000, file.clone(), 0x1000)
            .unwrap();
        let mut b = [0u8; 2];
        main.read(0x10fff, &mut b).unwrap();
        assert_eq!(&b, b"bc", "file pages 1 and 2 at 0x10000");
        // Written in the main VM (a patched relocation): the views see it.
        main.map_file(0x40000, 0x2000, file.clone(), 0).unwrap();
        main.write_any_protection(0x41000, b"MAIN").unwrap();
        assert_eq!(main.files().len(), 2, "the written page is the memfd's now");
        let image = main.freeze();
        let mut a = image.fork(2 << 20).unwrap();
        let v = image.fork(2 << 20).unwrap();
        let mut m = [0u8; 5];
        v.read(0x40fff, &mut m).unwrap();
        assert_eq!(&m, b"aMAIN");
        a.read(0x12000, &mut b).unwrap();
        assert_eq!(&b, b"dd");
        // A write copies the page for this view only.
        a.write(0x11000, b"XY").unwrap();
        v.read(0x11000, &mut b).unwrap();
        assert_eq!(&b, b"cc");
        image.read(0x11000, &mut b).unwrap();
        assert_eq!(&b, b"cc");
        assert!(!a.page_same_as(&image, 0x11));
        // A request maps a file elsewhere and unmaps part of the frozen one.
        a.map_file(0x20000, 0x1000, file.clone(), 0).unwrap();
        a.zero(0x12000, 0x1000).unwrap();
        a.read(0x12000, &mut b).unwrap();
        assert_eq!(&b, b"\0\0");
        a.read(0x20000, &mut b).unwrap();
        assert_eq!(&b, b"aa");
        let none = PageSet::new();
        a.reset_pages(&image, &none, 0..0, &none, &mut Vec::new())
            .unwrap();
        for (at, want) in [
            (0x10000, b"bb"),
            (0x11000, b"cc"),
            (0x12000, b"dd"),
            (0x20000, b"\0\0"),
        ] {
            a.read(at, &mut b).unwrap();
            assert_eq!(&b, want, "at {at:#x} after the reset");
        }
        assert_eq!(a.files().len(), 2);
        assert!(a.page_same_as(&image, 0x11));
        // A full reset too.
        a.write(0x10000, b"ZZ").unwrap();
        a.unmap_files(0x10000, 0x3000).unwrap();
        a.discard_private().unwrap();
        a.read(0x10000, &mut b).unwrap();
        assert_eq!(&b, b"bb");
        // Outside the file or not aligned: refused.
        assert!(a.map_file(0x30001, 0x1000, file.clone(), 0).is_err());
        assert!(a.map_file((2 << 20) - 0x1000, 0x2000, file, 0).is_err());
    }
}
