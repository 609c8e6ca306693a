//! `decode::cost` against what decoding really allocates, measured with a counting global
//! allocator: for every kind of image the worker charges to its memory budget, the peak of live
//! heap bytes during `decode` must stay within `cost(..).peak_bytes` (plus 1 MiB of slack for
//! decoder tables and row buffers). This is the evidence behind the worker's budget (an earlier
//! budget of 3 bytes a pixel was 2 to 5.5× short for 16-bit and EXIF-rotated images).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, Rgba};
use ocrfleet_ocr::decode;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarding to the system allocator with the caller's layout.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::SeqCst) + l.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: as for alloc/dealloc; the old block stays live until the copy is done.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new > l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::SeqCst) + new - l.size();
                // A moving realloc holds both blocks for a moment.
                PEAK.fetch_max(now + l.size(), Ordering::SeqCst);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::SeqCst);
            }
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Tests in this file measure process-wide allocation: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn encode(img: &DynamicImage, fmt: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, fmt).unwrap();
    buf.into_inner()
}

/// Inserts an EXIF APP1 segment with the given orientation right after a JPEG's SOI marker.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    // TIFF header (little endian), one IFD entry: tag 0x0112 (Orientation), SHORT, count 1.
    let mut tiff = vec![b'I', b'I', 42, 0, 8, 0, 0, 0, 1, 0];
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // value padding, next IFD = 0
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn check(name: &str, bytes: &[u8]) {
    let cost = decode::cost(bytes, 100_000_000).unwrap();
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let img = decode::decode(bytes, 100_000_000).unwrap();
    let used = (PEAK.load(Ordering::SeqCst) - base) as u64;
    let rgb = u64::from(img.width()) * u64::from(img.height()) * 3;
    drop(img);
    println!(
        "{name:<28} {:>5}x{:<5} peak {:>6.1} MB  charged {:>6.1} MB  ({:.2}x of RGB)",
        cost.width,
        cost.height,
        used as f64 / 1e6,
        cost.peak_bytes as f64 / 1e6,
        used as f64 / rgb as f64
    );
    assert_eq!(cost.rgb_bytes, rgb, "{name}: RGB size");
    assert!(
        used <= cost.peak_bytes + (1 << 20),
        "{name}: decoding used {used} bytes at its peak, over the charge of {}",
        cost.peak_bytes
    );
}

#[test]
fn decoding_stays_within_its_charge() {
    let _one = SERIAL.lock().unwrap();
    let (w, h) = (1600u32, 1200u32);
    let rgb8 = DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 239) as u8])
    }));
    let rgba16 = DynamicImage::ImageRgba16(ImageBuffer::from_fn(w, h, |x, y| {
        Rgba([
            (x * 40) as u16,
            (y * 50) as u16,
            9000,
            if x % 7 == 0 { 0 } else { 65535 },
        ])
    }));
    let gray16 =
        DynamicImage::ImageLuma16(ImageBuffer::from_fn(w, h, |x, y| Luma([(x * y) as u16])));
    let gray8 = DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, _| Luma([x as u8])));
    let rgba8 = DynamicImage::ImageRgba8(rgb8.to_rgba8());
    let jpeg = encode(&rgb8, ImageFormat::Jpeg);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("png rgb8", encode(&rgb8, ImageFormat::Png)),
        ("png rgba16", encode(&rgba16, ImageFormat::Png)),
        (
            "png rgb16",
            encode(
                &DynamicImage::ImageRgb16(rgba16.to_rgb16()),
                ImageFormat::Png,
            ),
        ),
        ("png gray16", encode(&gray16, ImageFormat::Png)),
        ("png gray8", encode(&gray8, ImageFormat::Png)),
        ("png rgba8", encode(&rgba8, ImageFormat::Png)),
        ("jpeg rgb", jpeg.clone()),
        ("jpeg gray", encode(&gray8, ImageFormat::Jpeg)),
        ("jpeg rgb, EXIF rotate 90", with_exif_orientation(&jpeg, 6)),
        ("jpeg rgb, EXIF rotate 180", with_exif_orientation(&jpeg, 3)),
        ("tiff rgb8", encode(&rgb8, ImageFormat::Tiff)),
        ("tiff rgba16", encode(&rgba16, ImageFormat::Tiff)),
        ("webp rgba8", encode(&rgba8, ImageFormat::WebP)),
        ("bmp rgb8", encode(&rgb8, ImageFormat::Bmp)),
        (
            "gif",
            encode(
                &DynamicImage::ImageRgba8(rgba8.to_rgba8()),
                ImageFormat::Gif,
            ),
        ),
    ];
    for (name, bytes) in &cases {
        check(name, bytes);
    }
    // The rotated JPEG really is rotated (the EXIF segment is read), so its case is meaningful.
    let r = decode::decode(&cases[8].1, 100_000_000).unwrap();
    assert_eq!(r.dimensions(), (h, w));
}
