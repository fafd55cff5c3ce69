//! Image validation: what the bytes really are, how big, and whether they decode.
//!
//! The sniffed format is authoritative (the declared content type is only kept). A
//! recognised format outside PNG, JPEG, WebP and GIF is refused as such. Dimensions are
//! read from the header and checked against the pixel limit *before* decoding — the
//! `image` crate's own `Limits` cap width, height and allocation but not the pixel count,
//! so a 10000×10000 image (well under its 512 MiB default) would otherwise be decoded.
//! Then the image is fully decoded under `Limits` sized from the header, so truncated or
//! corrupt data is caught, within a time limit ([`ImageLimits::decode_timeout`]): the
//! decoder reads through a reader that fails once the time is up, and animations are
//! checked between frames. This is CPU work: callers run it off the async runtime (and
//! stop waiting at the time limit, for a decoder that reads all its input first).

use std::io::{self, BufRead, Cursor, Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use image::codecs::gif::GifDecoder;
use image::codecs::webp::WebPDecoder;
use image::{AnimationDecoder, ImageDecoder, ImageFormat, ImageReader, Limits};
use turngate_core::{Error, ErrorCode};

/// What validation checks against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest width × height. Default 40 megapixels.
    pub max_pixels: u64,
    /// Longest a validation may take; longer is `decode_timeout`. Default 3 s (a 40 MP
    /// PNG validates in 0.25 s here, ten one-pixel GIF frames on a 36 MP canvas in
    /// 1.7 s; BENCHMARKS.md).
    pub decode_timeout: Duration,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_pixels: 40_000_000,
            decode_timeout: Duration::from_secs(3),
        }
    }
}

/// The refusal of an image that did not decode within `limit`.
pub fn decode_timeout(limit: Duration) -> Error {
    Error::refused(
        ErrorCode::DecodeTimeout,
        format!(
            "the image did not decode within {} ms; it is refused",
            limit.as_millis()
        ),
    )
}

/// A valid image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The sniffed format's content type.
    pub mime: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Bytes the header probe may allocate: headers and the metadata before the pixels (an
/// ICC profile, text chunks), which PNG stores compressed. Without it the probe ran
/// with the image crate's 512 MiB default, and a 446 KiB PNG whose iCCP chunk inflates
/// to 448 MiB raised the gateway's peak RSS by 450 MiB. (The png crate stops inflating
/// a profile at the budget and drops it; the image is still validated, and the bytes
/// kept are the client's, profile included.)
const PROBE_ALLOC: u64 = 4 * 1024 * 1024;

/// Bytes of decoded pixel data the decoder may allocate per pixel (RGBA, 16 bits per
/// channel), plus fixed slack for decoder state. A PNG gets its header's own bytes per
/// pixel instead: its decoder spends the same budget again on what it inflates (an ICC
/// profile, text), so a generous budget is a metadata bomb's room — a 6324×6324
/// grayscale PNG whose profile inflates to 330 MiB raised peak RSS by 348 MB with 8.
const ALLOC_PER_PIXEL: u64 = 8;
const ALLOC_SLACK: u64 = 16 * 1024 * 1024;

/// Checks that `bytes` are an accepted, decodable image within the limits.
pub fn validate(bytes: &[u8], limits: &ImageLimits) -> Result<ImageInfo, Error> {
    let deadline = Instant::now() + limits.decode_timeout;
    let info = validate_until(bytes, limits, deadline)?;
    if Instant::now() > deadline {
        return Err(decode_timeout(limits.decode_timeout));
    }
    Ok(info)
}

fn validate_until(
    bytes: &[u8],
    limits: &ImageLimits,
    deadline: Instant,
) -> Result<ImageInfo, Error> {
    let format = image::guess_format(bytes).map_err(|_| other_image(bytes))?;
    let mime = match format {
        ImageFormat::Png => "image/png",
        ImageFormat::Jpeg => "image/jpeg",
        ImageFormat::WebP => "image/webp",
        ImageFormat::Gif => "image/gif",
        ImageFormat::Avif => return Err(unsupported("AVIF")),
        other => {
            let name = other
                .extensions_str()
                .first()
                .copied()
                .unwrap_or("this format");
            return Err(unsupported(&name.to_ascii_uppercase()));
        }
    };
    let corrupt = |e: image::ImageError| {
        if Instant::now() >= deadline {
            // The reader gave up: whatever the decoder made of that, it is the time.
            return decode_timeout(limits.decode_timeout);
        }
        Error::refused(
            ErrorCode::CorruptImage,
            format!("the {mime} does not decode: {e}"),
        )
    };
    let input = || Timed {
        inner: Cursor::new(bytes),
        deadline,
    };
    let mut probe = ImageReader::with_format(input(), format);
    let mut probe_limits = Limits::default();
    probe_limits.max_alloc = Some(PROBE_ALLOC);
    probe.limits(probe_limits);
    let header = probe.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(_) => Error::refused(
            ErrorCode::CorruptImage,
            format!(
                "the {mime}'s metadata (an ICC profile or text) needs more than {} MiB; it is refused",
                PROBE_ALLOC >> 20
            ),
        ),
        other => corrupt(other),
    })?;
    let (width, height) = header.dimensions();
    let per_pixel = match format {
        ImageFormat::Png => u64::from(header.color_type().bytes_per_pixel()),
        _ => ALLOC_PER_PIXEL,
    };
    drop(header);
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(Error::refused(
            ErrorCode::TooManyPixels,
            format!(
                "{width}×{height} is {pixels} pixels, over the limit of {}",
                limits.max_pixels
            ),
        ));
    }
    if pixels == 0 {
        return Err(Error::refused(
            ErrorCode::CorruptImage,
            format!("the {mime} is {width}×{height}"),
        ));
    }
    let mut decode_limits = Limits::default();
    decode_limits.max_image_width = Some(width);
    decode_limits.max_image_height = Some(height);
    decode_limits.max_alloc = Some(pixels * per_pixel + ALLOC_SLACK);
    match format {
        // Animations: every frame is decoded (one at a time), so damage in a later
        // frame is caught too; all frames together stay within a pixel budget.
        ImageFormat::Gif => {
            let mut decoder = GifDecoder::new(input()).map_err(corrupt)?;
            decoder.set_limits(decode_limits).map_err(corrupt)?;
            decode_frames(decoder.into_frames(), pixels, limits, deadline, corrupt)?;
        }
        ImageFormat::WebP => {
            let mut decoder = WebPDecoder::new(input()).map_err(corrupt)?;
            if decoder.has_animation() {
                decoder.set_limits(decode_limits).map_err(corrupt)?;
                decode_frames(decoder.into_frames(), pixels, limits, deadline, corrupt)?;
            } else {
                decoder.set_limits(decode_limits).map_err(corrupt)?;
                image::DynamicImage::from_decoder(decoder).map_err(corrupt)?;
            }
        }
        _ => {
            let mut reader = ImageReader::with_format(input(), format);
            reader.limits(decode_limits);
            reader.decode().map_err(corrupt)?;
        }
    }
    Ok(ImageInfo {
        mime,
        width,
        height,
    })
}

/// What bytes the image crate does not recognise are: an ISO-BMFF image (HEIC/HEIF, as
/// iPhones take photos, or AVIF) by the brands of its `ftyp` box, another image format
/// by its signature (via `infer`), or not an image at all.
fn other_image(bytes: &[u8]) -> Error {
    if let Some(name) = bmff_image(bytes) {
        return unsupported(name);
    }
    match infer::get(bytes) {
        Some(kind) if kind.matcher_type() == infer::MatcherType::Image => {
            unsupported(&kind.extension().to_ascii_uppercase())
        }
        _ => Error::refused(
            ErrorCode::NotAnImage,
            "the bytes are not a recognised image format",
        ),
    }
}

/// `HEIC/HEIF` or `AVIF` if `bytes` start with an ISO-BMFF `ftyp` box (ISO/IEC 14496-12
/// §4.3) whose major or compatible brands name one (ISO/IEC 23008-12 and the AVIF
/// specification list them).
fn bmff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.get(4..8)? != b"ftyp" {
        return None;
    }
    let size = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let ftyp = bytes.get(8..size.clamp(16, 4096).min(bytes.len()))?;
    // The major brand, the minor version, then compatible brands.
    let brands =
        std::iter::once(ftyp.get(..4)?).chain(ftyp.get(8..).unwrap_or_default().chunks_exact(4));
    let mut heif = false;
    for brand in brands {
        match brand {
            b"avif" | b"avis" => return Some("AVIF"),
            b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" | b"hevm" | b"hevs"
            | b"mif1" | b"mif2" | b"msf1" | b"miaf" => heif = true,
            _ => {}
        }
    }
    heif.then_some("HEIC/HEIF")
}

/// `unsupported_image_format`, naming the format and what is accepted.
fn unsupported(format: &str) -> Error {
    Error::refused(
        ErrorCode::UnsupportedImageFormat,
        format!("{format} images are not accepted; send PNG, JPEG, WebP or GIF"),
    )
}

/// Frames of an animation may add up to this many times the pixel limit.
const ANIMATION_PIXEL_BUDGET: u64 = 10;

fn decode_frames(
    frames: image::Frames<'_>,
    frame_pixels: u64,
    limits: &ImageLimits,
    deadline: Instant,
    corrupt: impl Fn(image::ImageError) -> Error,
) -> Result<(), Error> {
    let mut decoded = 0u64;
    for frame in frames {
        frame.map_err(&corrupt)?;
        if Instant::now() >= deadline {
            return Err(decode_timeout(limits.decode_timeout));
        }
        decoded += frame_pixels;
        if decoded > ANIMATION_PIXEL_BUDGET * limits.max_pixels {
            return Err(Error::refused(
                ErrorCode::TooManyPixels,
                format!(
                    "the animation's frames exceed {} pixels in all",
                    ANIMATION_PIXEL_BUDGET * limits.max_pixels
                ),
            ));
        }
    }
    Ok(())
}

/// The image's bytes as a decoder reads them, failing with `TimedOut` once the
/// deadline has passed: decoders that read as they go (PNG, GIF, WebP) stop there.
struct Timed<'a> {
    inner: Cursor<&'a [u8]>,
    deadline: Instant,
}

impl Timed<'_> {
    fn check(&self) -> io::Result<()> {
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the decode time limit passed",
            ));
        }
        Ok(())
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        self.inner.read(buf)
    }
}

impl BufRead for Timed<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.check()?;
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount);
    }
}

impl Seek for Timed<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn code(bytes: &[u8]) -> ErrorCode {
        validate(bytes, &ImageLimits::default()).unwrap_err().code()
    }

    #[test]
    fn accepts_a_png_and_reads_its_size() {
        let info = validate(&png(64, 48), &ImageLimits::default()).unwrap();
        assert_eq!(
            info,
            ImageInfo {
                mime: "image/png",
                width: 64,
                height: 48
            }
        );
    }

    /// A GIF of `frames` frames of `side` × `side`, each of its own colour.
    fn animation(frames: u8, side: u32) -> Vec<u8> {
        let frames = (0..frames).map(|i| {
            image::Frame::new(image::RgbaImage::from_pixel(
                side,
                side,
                image::Rgba([i.wrapping_mul(10), 0, 0, 255]),
            ))
        });
        let mut gif = Vec::new();
        image::codecs::gif::GifEncoder::new(&mut gif)
            .encode_frames(frames)
            .unwrap();
        gif
    }

    #[test]
    fn damage_in_a_later_animation_frame_is_caught() {
        let gif = animation(3, 32);
        assert_eq!(
            validate(&gif, &ImageLimits::default()).unwrap().mime,
            "image/gif"
        );
        // Cut into the last frame: the first frames still decode, the whole does not.
        let cut = &gif[..gif.len() - 20];
        assert_eq!(code(cut), ErrorCode::CorruptImage);
    }

    #[test]
    fn an_image_that_decodes_too_slowly_is_refused_in_time() {
        // 24 frames of 1000×1000: each is composited onto the canvas, taking well over
        // the 1 ms allowed here.
        let gif = animation(24, 1000);
        let limits = ImageLimits {
            decode_timeout: Duration::from_millis(1),
            ..ImageLimits::default()
        };
        let started = Instant::now();
        let err = validate(&gif, &limits).unwrap_err();
        assert_eq!(err.code(), ErrorCode::DecodeTimeout, "{err}");
        assert!(started.elapsed() < Duration::from_millis(500));
        let patient = ImageLimits {
            decode_timeout: Duration::from_secs(60),
            ..ImageLimits::default()
        };
        assert!(validate(&gif, &patient).is_ok());
    }

    #[test]
    fn refuses_each_kind_of_bad_image_with_its_code() {
        assert_eq!(code(b"hello, not an image at all"), ErrorCode::NotAnImage);
        // An iPhone photo (HEIC) and an AVIF, by their ISO-BMFF `ftyp` brands.
        for (brand, name) in [
            (&b"heic"[..], "HEIC/HEIF"),
            (b"mif1", "HEIC/HEIF"),
            (b"hevc", "HEIC/HEIF"),
            (b"avif", "AVIF"),
        ] {
            let mut file = vec![0, 0, 0, 24];
            file.extend_from_slice(b"ftyp");
            file.extend_from_slice(brand);
            file.extend_from_slice(&[0, 0, 0, 0]);
            file.extend_from_slice(b"mif1miaf");
            file.extend_from_slice(&[0; 64]);
            let err = validate(&file, &ImageLimits::default()).unwrap_err();
            assert_eq!(
                err.code(),
                ErrorCode::UnsupportedImageFormat,
                "{name}: {err}"
            );
            assert!(err.to_string().contains(name), "{err}");
            assert!(err.to_string().contains("PNG, JPEG, WebP or GIF"), "{err}");
        }
        // A TIFF and a BMP header: recognised, not accepted, named as people name them.
        let tiff = validate(b"II*\x00\x08\x00\x00\x00rest", &ImageLimits::default()).unwrap_err();
        assert_eq!(tiff.code(), ErrorCode::UnsupportedImageFormat);
        assert!(tiff.to_string().starts_with("TIF"), "{tiff}");
        let bmp = validate(
            b"BM\x36\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00",
            &ImageLimits::default(),
        )
        .unwrap_err();
        assert!(bmp.to_string().starts_with("BMP images"), "{bmp}");
        let mut truncated = png(64, 48);
        truncated.truncate(truncated.len() / 2);
        assert_eq!(code(&truncated), ErrorCode::CorruptImage);
        let limits = ImageLimits {
            max_pixels: 1000,
            ..ImageLimits::default()
        };
        assert_eq!(
            validate(&png(40, 30), &limits).unwrap_err().code(),
            ErrorCode::TooManyPixels
        );
    }
}
