//! Metadata bombs: an image whose ancillary data inflates far beyond its size must not
//! make validation allocate it. Measured with a counting allocator around `validate`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::ImageEncoder;
use turngate_media::image::{ImageLimits, validate};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A 1×1 PNG whose iCCP chunk inflates to `profile` bytes (it compresses to about a
/// thousandth of that).
fn png_with_icc_profile(profile: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = image::codecs::png::PngEncoder::new(&mut out);
    encoder.set_icc_profile(vec![0; profile]).unwrap();
    encoder
        .write_image(&[1, 2, 3], 1, 1, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

#[test]
fn an_icc_profile_bomb_is_not_inflated() {
    let bomb = png_with_icc_profile(256 << 20);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let info = validate(&bomb, &ImageLimits::default()).expect("a valid 1×1 PNG");
    assert_eq!((info.width, info.height), (1, 1));
    let grew = PEAK.load(Ordering::Relaxed) - before;
    assert!(grew < 64 << 20, "validation allocated {} MiB", grew >> 20);
}
