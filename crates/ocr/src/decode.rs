//! Bytes to pixels. Every supported format (JPEG, PNG, WebP, BMP, TIFF, GIF's first frame) ends
//! up as 8-bit RGB, upright per its EXIF orientation, with alpha composited over white (as
//! RapidOCR does) so that dark text on a transparent background stays readable.
//!
//! Memory is bounded before any pixel is allocated: the header's dimensions are checked
//! against `max_pixels`, and the decoder gets an allocation limit as a second guard.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use crate::error::DecodeError;

/// Default decoded-pixel limit: 50 megapixels (about 150 MB as RGB).
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

/// Decodes `bytes` into an upright RGB image, refusing anything over `max_pixels`.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    let mut reader = open(bytes)?;
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err(DecodeError::Corrupt(
            "truncated JPEG: no end-of-image marker after the scan data".into(),
        ));
    }
    let mut limits = Limits::default();
    // Room for the widest intermediate (16-bit RGBA) of an image at the limit.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(map_image_error)?;
    check_size(decoder.dimensions(), max_pixels)?;
    // A missing or unreadable EXIF block is not an error: the image is used as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
    img.apply_orientation(orientation);
    Ok(to_rgb_over_white(img))
}

/// What decoding an image will cost in memory, read from its header before any pixel exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Stored size (before EXIF rotation).
    pub width: u32,
    pub height: u32,
    /// The most bytes [`decode`] holds at once for this image: the decoder's own output in
    /// its native sample format (2 bytes a sample for 16-bit images), what the format's decoder
    /// keeps beside it (progressive JPEG: its coefficients; TIFF, WebP, GIF: a full frame), the copy
    /// that an EXIF rotation by 90° makes, and the 8-bit RGB(A) conversion.
    pub peak_bytes: u64,
    /// The bytes of the RGB image that [`decode`] returns.
    pub rgb_bytes: u64,
}

/// Reads only the header and prices the decode (see [`Cost`]), refusing images over
/// `max_pixels`. A worker charges `peak_bytes` to its memory budget while decoding, then keeps
/// `rgb_bytes` of it. Measured against a counting allocator in `tests/decode_cost.rs`.
pub fn cost(bytes: &[u8], max_pixels: u64) -> Result<Cost, DecodeError> {
    let reader = open(bytes)?;
    let format = reader.format();
    let mut decoder = reader.into_decoder().map_err(map_image_error)?;
    let (width, height) = decoder.dimensions();
    check_size((width, height), max_pixels)?;
    let px = u64::from(width) * u64::from(height);
    let color = decoder.color_type();
    let native = px * u64::from(color.bytes_per_pixel());
    let channels = u64::from(color.channel_count());
    use image::metadata::Orientation as O;
    let rotates = matches!(
        decoder.orientation().unwrap_or(O::NoTransforms),
        O::Rotate90 | O::Rotate270 | O::Rotate90FlipH | O::Rotate270FlipH
    );
    let internal = match format {
        // A progressive JPEG (SOF2) keeps every coefficient (2 bytes a sample) until the end;
        // a baseline one decodes row by row into the output.
        Some(image::ImageFormat::Jpeg) if bytes.windows(2).any(|w| w == [0xFF, 0xC2]) => {
            2 * px * channels
        }
        Some(image::ImageFormat::Jpeg) => 0,
        Some(image::ImageFormat::Png) | Some(image::ImageFormat::Bmp) => 0,
        _ => native.max(px * 4),
    };
    let convert = match color {
        image::ColorType::Rgb8 => 0,
        image::ColorType::Rgba8 => 3 * px,
        c if c.has_alpha() => 7 * px, // to RGBA8, then to RGB8
        _ => 3 * px,
    };
    let rotate = if rotates { native } else { 0 };
    Ok(Cost {
        width,
        height,
        peak_bytes: native + internal.max(rotate).max(convert),
        rgb_bytes: 3 * px,
    })
}

/// Reads only the header: the stored width and height (before EXIF rotation), refusing
/// images over `max_pixels`. Lets callers budget memory before decoding.
pub fn dimensions(bytes: &[u8], max_pixels: u64) -> Result<(u32, u32), DecodeError> {
    let size = open(bytes)?.into_dimensions().map_err(map_image_error)?;
    check_size(size, max_pixels)?;
    Ok(size)
}

/// A reader with its format recognised from the bytes.
fn open(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if reader.format().is_none() {
        return Err(DecodeError::UnknownFormat);
    }
    Ok(reader)
}

fn check_size((width, height): (u32, u32), max_pixels: u64) -> Result<(), DecodeError> {
    let pixels = u64::from(width) * u64::from(height);
    if width == 0 || height == 0 {
        return Err(DecodeError::ZeroSize { width, height });
    }
    if pixels > max_pixels {
        return Err(DecodeError::TooLarge {
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    Ok(())
}

/// The JPEG decoder fills a truncated scan with grey instead of failing; a complete file has
/// an end-of-image marker (FF D9) after its last start-of-scan (FF DA). Inside scan data 0xFF is
/// always followed by 0x00 or a restart marker, so FF D9 there is the real end; an EXIF
/// thumbnail's own markers come before the main scan.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |m: u8| bytes.windows(2).rposition(|w| w[0] == 0xFF && w[1] == m);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

fn map_image_error(e: image::ImageError) -> DecodeError {
    match e {
        image::ImageError::Unsupported(u) => match u.kind() {
            image::error::UnsupportedErrorKind::Format(_) => DecodeError::UnknownFormat,
            _ => DecodeError::Corrupt(u.to_string()),
        },
        image::ImageError::Limits(l) => DecodeError::Corrupt(format!("decoder limit: {l}")),
        other => DecodeError::Corrupt(other.to_string()),
    }
}

/// Converts any colour type to 8-bit RGB; transparent pixels become white.
fn to_rgb_over_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (src, dst) in rgba.pixels().zip(out.pixels_mut()) {
        let a = u16::from(src[3]);
        for c in 0..3 {
            // c·a + 255·(1−a), in integer arithmetic with rounding.
            dst[c] = ((u16::from(src[c]) * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, ImageFormat, Luma, Rgba};

    fn encode(img: &DynamicImage, fmt: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, fmt).unwrap();
        buf.into_inner()
    }

    #[test]
    fn empty_and_garbage_are_typed_errors() {
        assert_eq!(decode(b"", 1000), Err(DecodeError::Empty));
        assert_eq!(
            decode(b"hello, this is not an image", 1000),
            Err(DecodeError::UnknownFormat)
        );
    }

    #[test]
    fn pixel_limit_is_checked_before_decoding() {
        let img = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(100, 50, Luma([7u8])));
        let png = encode(&img, ImageFormat::Png);
        match decode(&png, 4999) {
            Err(DecodeError::TooLarge { pixels: 5000, .. }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(decode(&png, 5000).unwrap().dimensions(), (100, 50));
    }

    #[test]
    fn sixteen_bit_gray_becomes_rgb8() {
        let img = DynamicImage::ImageLuma16(ImageBuffer::from_pixel(4, 3, Luma([65535u16])));
        let out = decode(&encode(&img, ImageFormat::Png), 1000).unwrap();
        assert_eq!(out.get_pixel(0, 0).0, [255, 255, 255]);
    }

    #[test]
    fn alpha_is_composited_over_white() {
        let mut img = ImageBuffer::from_pixel(2, 1, Rgba([0u8, 0, 0, 0]));
        img.put_pixel(1, 0, Rgba([0, 0, 0, 255]));
        let out = decode(
            &encode(&DynamicImage::ImageRgba8(img), ImageFormat::Png),
            1000,
        )
        .unwrap();
        assert_eq!(out.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(out.get_pixel(1, 0).0, [0, 0, 0]);
    }

    #[test]
    fn truncated_jpeg_is_corrupt() {
        let img =
            DynamicImage::ImageLuma8(ImageBuffer::from_fn(64, 64, |x, y| Luma([(x * y) as u8])));
        let jpg = encode(&img, ImageFormat::Jpeg);
        assert!(decode(&jpg, 1 << 20).is_ok());
        let cut = &jpg[..jpg.len() * 2 / 3];
        assert!(
            matches!(decode(cut, 1 << 20), Err(DecodeError::Corrupt(m)) if m.contains("truncated"))
        );
    }

    #[test]
    fn truncated_png_is_corrupt_not_panic() {
        let img = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(64, 64, Luma([200u8])));
        let png = encode(&img, ImageFormat::Png);
        let cut = &png[..png.len() / 2];
        assert!(matches!(decode(cut, 1 << 20), Err(DecodeError::Corrupt(_))));
    }
}
