//! Bytes to pixels. Every supported format (JPEG, PNG, WebP, BMP, TIFF, GIF's first frame) ends
//! up as 8-bit RGB, upright per its EXIF orientation, with alpha composited over white (as
//! RapidOCR does) so that dark text on a transparent background stays readable.
//!
//! Memory is bounded before any pixel is allocated: the header's dimensions are checked
//! against `max_pixels`, and the decoder gets an allocation limit as a second guard.
//!
//! **Pages.** A multi-page TIFF (faxes, scanned forms, document archives) is read page by page
//! with [`decode_pages`], up to a page limit; a file with more pages is refused whole
//! ([`DecodeError::TooManyPages`]) rather than read in part. [`decode`] and [`cost`] see the
//! first page only. Animated GIF and WebP give their first frame: a frame of an animation is
//! not a page of a document.

use std::io::{Cursor, Read, Seek, SeekFrom};

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use crate::error::DecodeError;

/// Default decoded-pixel limit: 50 megapixels (about 150 MB as RGB).
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

/// Decodes `bytes` into an upright RGB image (the first page of a multi-page file), refusing
/// anything over `max_pixels`.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    decode_reader(Cursor::new(bytes), bytes, max_pixels)
}

/// [`decode`] of the image that `r` reads; `bytes` are the file's bytes (for the JPEG check).
fn decode_reader<R: Read + Seek>(
    r: R,
    bytes: &[u8],
    max_pixels: u64,
) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut reader = open(std::io::BufReader::new(r))?;
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
    /// Pages priced: 1, or a multi-page TIFF's count ([`cost_pages`]).
    pub pages: u32,
}

/// Reads only the header and prices the decode (see [`Cost`]), refusing images over
/// `max_pixels`. A worker charges `peak_bytes` to its memory budget while decoding, then keeps
/// `rgb_bytes` of it. Measured against a counting allocator in `tests/decode_cost.rs`.
pub fn cost(bytes: &[u8], max_pixels: u64) -> Result<Cost, DecodeError> {
    cost_reader(Cursor::new(bytes), bytes, max_pixels)
}

/// [`cost`] of the image that `r` reads; `bytes` are the file's bytes (for the JPEG scan check).
fn cost_reader<R: Read + Seek>(r: R, bytes: &[u8], max_pixels: u64) -> Result<Cost, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let reader = open(std::io::BufReader::new(r))?;
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
        pages: 1,
    })
}

/// Default page limit of [`decode_pages`].
pub const DEFAULT_MAX_PAGES: u32 = 50;

/// Decodes every page of `bytes` (a multi-page TIFF has several; every other file one), each
/// as [`decode`] would, refusing a file of more than `max_pages` pages.
pub fn decode_pages(
    bytes: &[u8],
    max_pixels: u64,
    max_pages: u32,
) -> Result<Vec<RgbImage>, DecodeError> {
    match tiff_pages(bytes, max_pages)? {
        None => Ok(vec![decode(bytes, max_pixels)?]),
        Some(pages) => pages
            .iter()
            .map(|&ifd| decode_reader(page_reader(bytes, ifd), bytes, max_pixels))
            .collect(),
    }
}

/// [`cost`] of [`decode_pages`]: pages are decoded one after the other and all are kept, so the
/// peak is every page's RGB image plus the largest page's own intermediates; `rgb_bytes` is
/// the sum of the pages' RGB images. `width` and `height` are the first page's.
pub fn cost_pages(bytes: &[u8], max_pixels: u64, max_pages: u32) -> Result<Cost, DecodeError> {
    let Some(pages) = tiff_pages(bytes, max_pages)? else {
        return cost(bytes, max_pixels);
    };
    let mut total = Cost {
        width: 0,
        height: 0,
        peak_bytes: 0,
        rgb_bytes: 0,
        pages: 0,
    };
    let mut extra = 0;
    for &ifd in &pages {
        let c = cost_reader(page_reader(bytes, ifd), bytes, max_pixels)?;
        if total.pages == 0 {
            (total.width, total.height) = (c.width, c.height);
        }
        total.pages += 1;
        total.rgb_bytes += c.rgb_bytes;
        extra = extra.max(c.peak_bytes.saturating_sub(c.rgb_bytes));
    }
    total.peak_bytes = total.rgb_bytes + extra;
    Ok(total)
}

/// The offsets of a TIFF's image file directories (one per page), in file order, or `None`
/// when `bytes` is not a TIFF. Stops at `max_pages + 1` and then refuses the file. The walk is
/// the `tiff` crate's, which refuses a directory chain that loops.
fn tiff_pages(bytes: &[u8], max_pages: u32) -> Result<Option<Vec<u64>>, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if tiff_header(bytes).is_none() {
        return Ok(None);
    }
    let bad = |e: tiff::TiffError| DecodeError::Corrupt(format!("TIFF: {e}"));
    let mut d = tiff::decoder::Decoder::new(Cursor::new(bytes)).map_err(bad)?;
    let mut pages = Vec::new();
    while let Some(ifd) = d.ifd_pointer() {
        pages.push(ifd.0);
        if pages.len() > max_pages.max(1) as usize {
            return Err(DecodeError::TooManyPages { limit: max_pages });
        }
        if !d.more_images() {
            break;
        }
        d.next_image()
            .map_err(|e| DecodeError::Corrupt(format!("TIFF page {}: {e}", pages.len() + 1)))?;
    }
    if pages.is_empty() {
        return Err(DecodeError::Corrupt(
            "TIFF without an image directory".into(),
        ));
    }
    Ok(Some(pages))
}

/// Where a TIFF header keeps the offset of the first image directory: (position, width in
/// bytes, little-endian); `None` when `bytes` is not a TIFF.
fn tiff_header(bytes: &[u8]) -> Option<(usize, usize, bool)> {
    match bytes.get(..4)? {
        b"II*\0" => Some((4, 4, true)),
        b"MM\0*" => Some((4, 4, false)),
        b"II+\0" => Some((8, 8, true)),
        b"MM\0+" => Some((8, 8, false)),
        _ => None,
    }
}

/// `bytes` as a TIFF whose first page is the directory at `ifd`: the header's first-directory
/// offset is overlaid, nothing is copied. Every other offset in a TIFF is absolute, so the
/// image crate then decodes that page as if it were the first.
fn page_reader(bytes: &[u8], ifd: u64) -> PageReader<'_> {
    let (at, width, little) = tiff_header(bytes).expect("called for TIFFs only");
    let mut patch = [0u8; 8];
    match (width, little) {
        (4, true) => patch[..4].copy_from_slice(&(ifd as u32).to_le_bytes()),
        (4, false) => patch[..4].copy_from_slice(&(ifd as u32).to_be_bytes()),
        (_, true) => patch.copy_from_slice(&ifd.to_le_bytes()),
        (_, false) => patch.copy_from_slice(&ifd.to_be_bytes()),
    }
    PageReader {
        bytes,
        patch,
        at,
        width,
        pos: 0,
    }
}

/// A reader over `bytes` with `patch[..width]` in place of `bytes[at..at + width]`.
struct PageReader<'a> {
    bytes: &'a [u8],
    patch: [u8; 8],
    at: usize,
    width: usize,
    pos: u64,
}

impl Read for PageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let start = (self.pos as usize).min(self.bytes.len());
        let n = buf.len().min(self.bytes.len() - start);
        buf[..n].copy_from_slice(&self.bytes[start..start + n]);
        // The overlaid header field, where it falls inside what was read.
        for k in 0..self.width {
            let p = self.at + k;
            if p >= start && p < start + n {
                buf[p - start] = self.patch[k];
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PageReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let len = self.bytes.len() as i128;
        let at = match to {
            SeekFrom::Start(p) => i128::from(p),
            SeekFrom::End(d) => len + i128::from(d),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        if at < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        }
        self.pos = at as u64;
        Ok(self.pos)
    }
}

/// Reads only the header: the stored width and height (before EXIF rotation), refusing
/// images over `max_pixels`. Lets callers budget memory before decoding.
pub fn dimensions(bytes: &[u8], max_pixels: u64) -> Result<(u32, u32), DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let size = open(Cursor::new(bytes))?
        .into_dimensions()
        .map_err(map_image_error)?;
    check_size(size, max_pixels)?;
    Ok(size)
}

/// A reader with its format recognised from the first bytes.
fn open<R: std::io::BufRead + Seek>(r: R) -> Result<ImageReader<R>, DecodeError> {
    let reader = ImageReader::new(r)
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

    /// A TIFF of `pages` pages, each `(width, height, grey level)`.
    fn multipage(pages: &[(u32, u32, u8)]) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new(&mut buf).unwrap();
        for &(w, h, v) in pages {
            let data = vec![v; (w * h) as usize];
            enc.write_image::<tiff::encoder::colortype::Gray8>(w, h, &data)
                .unwrap();
        }
        buf.into_inner()
    }

    #[test]
    fn every_page_of_a_multi_page_tiff_is_decoded() {
        let tif = multipage(&[(40, 30, 10), (50, 20, 200), (30, 30, 90)]);
        assert_eq!(
            decode(&tif, 1 << 20).unwrap().dimensions(),
            (40, 30),
            "first page"
        );
        let pages = decode_pages(&tif, 1 << 20, 3).unwrap();
        let seen: Vec<_> = pages
            .iter()
            .map(|p| (p.width(), p.height(), p.get_pixel(0, 0).0[0]))
            .collect();
        assert_eq!(seen, vec![(40, 30, 10), (50, 20, 200), (30, 30, 90)]);
        let c = cost_pages(&tif, 1 << 20, 3).unwrap();
        assert_eq!(c.pages, 3);
        assert_eq!(c.rgb_bytes, 3 * (40 * 30 + 50 * 20 + 30 * 30));
        assert!(c.peak_bytes >= c.rgb_bytes);
        assert_eq!((c.width, c.height), (40, 30));
    }

    #[test]
    fn a_file_over_the_page_limit_is_refused_whole() {
        let tif = multipage(&[(8, 8, 1), (8, 8, 2), (8, 8, 3)]);
        assert_eq!(
            decode_pages(&tif, 1 << 20, 2),
            Err(DecodeError::TooManyPages { limit: 2 })
        );
        assert_eq!(
            cost_pages(&tif, 1 << 20, 2),
            Err(DecodeError::TooManyPages { limit: 2 })
        );
        // Each page is held to the pixel limit too.
        let big = multipage(&[(8, 8, 1), (100, 100, 2)]);
        assert!(matches!(
            decode_pages(&big, 1000, 5),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn single_images_are_one_page() {
        let img = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(9, 7, Luma([5u8])));
        let png = encode(&img, ImageFormat::Png);
        assert_eq!(decode_pages(&png, 1000, 1).unwrap().len(), 1);
        assert_eq!(cost_pages(&png, 1000, 1).unwrap().pages, 1);
        let tif = encode(&img, ImageFormat::Tiff);
        assert_eq!(decode_pages(&tif, 1000, 1).unwrap().len(), 1);
        assert_eq!(decode_pages(b"", 1000, 1), Err(DecodeError::Empty));
    }
}
