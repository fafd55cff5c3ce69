//! Metadata bombs: an image whose ancillary data inflates far beyond its size must not
//! make validation allocate it. Measured with a counting allocator around `validate`.
//! PNG is the accepted format whose ancillary data is compressed (iCCP, zTXt, iTXt);
//! JPEG, WebP and GIF store theirs (EXIF, ICC, XMP, comments) as is, so it is bounded
//! by the upload's size.

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

/// A `side` × `side` grayscale PNG (one byte per pixel) whose iCCP chunk inflates to
/// `profile` bytes.
fn gray_png_with_icc_profile(side: u32, profile: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = image::codecs::png::PngEncoder::new(&mut out);
    encoder.set_icc_profile(vec![0; profile]).unwrap();
    let pixels = vec![128u8; (side * side) as usize];
    encoder
        .write_image(&pixels, side, side, image::ExtendedColorType::L8)
        .unwrap();
    out
}

/// A 1×1 PNG with a chunk of type `kind` and `data` inserted after its header.
fn png_with_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let png = png_with_icc_profile(0);
    // Signature (8) and IHDR (4 + 4 + 13 + 4).
    let (head, tail) = png.split_at(33);
    let mut out = head.to_vec();
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(tail);
    out
}

/// 256 MiB of text as a zlib stream (about 256 KiB).
fn text_bomb() -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..256 {
        z.write_all(&chunk).unwrap();
    }
    z.finish().unwrap()
}

/// Validates `bomb` (a valid 1×1 PNG) and checks what it allocated on the way.
fn assert_not_inflated(bomb: &[u8]) {
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let info = validate(bomb, &ImageLimits::default()).expect("a valid 1×1 PNG");
    assert_eq!((info.width, info.height), (1, 1));
    let grew = PEAK.load(Ordering::Relaxed) - before;
    assert!(grew < 64 << 20, "validation allocated {} MiB", grew >> 20);
}

#[test]
fn an_icc_profile_bomb_is_not_inflated() {
    assert_not_inflated(&png_with_icc_profile(256 << 20));
}

#[test]
fn a_large_image_gives_its_metadata_no_more_room_than_its_pixels_need() {
    // 16 MP of one byte each: the full decode's budget is sized from the header's
    // pixel format, not from the widest one (8 bytes per pixel, 128 MiB here).
    let bomb = gray_png_with_icc_profile(4000, 256 << 20);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let info = validate(&bomb, &ImageLimits::default()).expect("a valid PNG");
    assert_eq!((info.width, info.height), (4000, 4000));
    let grew = PEAK.load(Ordering::Relaxed) - before;
    assert!(grew < 64 << 20, "validation allocated {} MiB", grew >> 20);
}

#[test]
fn compressed_text_bombs_are_not_inflated() {
    // zTXt: keyword, NUL, compression method 0, zlib stream.
    let mut ztxt = b"Comment\0\0".to_vec();
    ztxt.extend_from_slice(&text_bomb());
    assert_not_inflated(&png_with_chunk(b"zTXt", &ztxt));
    // iTXt: keyword, NUL, compressed (1), method 0, language, NUL, translated keyword,
    // NUL, zlib stream.
    let mut itxt = b"Description\0\x01\0en\0\0".to_vec();
    itxt.extend_from_slice(&text_bomb());
    assert_not_inflated(&png_with_chunk(b"iTXt", &itxt));
}
