//! What the worker and a renderer child say to each other over the child's stdin and stdout.
//!
//! A frame is a JSON header and a binary payload (a PDF's bytes going in, a page's pixels
//! coming out): `[u32 LE header length][header][u64 LE payload length][payload]`. Lengths are
//! bounded on both sides, so a confused or hostile peer cannot make the other allocate without
//! limit. The child holds at most one open document; every request but `Open` is about it.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// A scan is rendered at its own resolution, but at least this.
pub const MIN_SCAN_DPI: f32 = 72.0;

/// The longest header accepted (a page's characters can be a few MB of JSON).
pub const MAX_HEADER: u64 = 64 << 20;
/// The longest payload accepted: a PDF's bytes, or one page's RGB pixels.
pub const MAX_PAYLOAD: u64 = 1 << 31;

/// A request to a renderer child.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Request {
    /// Open the PDF in the payload (closing any open one), with the empty user password.
    Open,
    /// Describe page `index` (from 0) as a raster of at most `max_side` pixels on its longer
    /// side at `dpi`, or at the resolution of the scan on it (an image covering a quarter of the
    /// page or more, at its own resolution, between [`MIN_SCAN_DPI`] and `max_scan_dpi`): its
    /// size and its text layer's characters in that raster's pixels.
    Page {
        index: u32,
        dpi: f32,
        max_side: u32,
        max_scan_dpi: f32,
    },
    /// Render page `index` at `width` × `height` pixels (as the `Page` answer gave them), with
    /// its annotations and form fields as a viewer shows them.
    Render { index: u32, width: u32, height: u32 },
    /// Close the open document.
    Close,
}

/// Why a child could not do what it was asked.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Failure {
    /// The document needs a password (the empty one did not open it).
    Encrypted,
    /// Not a PDF PDFium can read (a broken cross-reference table, a page tree it cannot walk).
    Malformed,
    /// A page could not be loaded or rendered.
    Page,
    /// The request made no sense (no document open, a page out of range).
    Protocol,
}

/// A renderer child's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Response {
    Opened {
        pages: u32,
    },
    Page(PageData),
    /// The payload holds `width` × `height` RGB pixels.
    Rendered {
        width: u32,
        height: u32,
    },
    Closed,
    Failed {
        failure: Failure,
        message: String,
    },
}

/// A page as the child sees it, in the pixels of the raster it would render.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PageData {
    /// Size as displayed (after `/Rotate`), in points.
    pub width_pt: f32,
    pub height_pt: f32,
    /// `/Rotate`, in degrees clockwise (0, 90, 180, 270).
    pub rotation: u16,
    /// The raster: `dpi`, scaled down to `max_side` when the page is larger.
    pub width_px: u32,
    pub height_px: u32,
    /// The raster's resolution (before a scale-down to `max_side`): the request's, or the
    /// scan's own.
    pub dpi: f32,
    /// The share of the page's area covered by images (0..1, overlaps counted twice).
    pub image_cover: f32,
    /// Annotations that show something on the page (form fields, free text, stamps; not links
    /// or pop-ups): their text is not in the text layer.
    pub annotations: u32,
    /// The text layer's characters, in content order (see [`RawChar`]).
    pub chars: Vec<RawChar>,
}

/// One character of a page's text layer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct RawChar {
    /// The Unicode scalar value PDFium gives (0 when it gives none).
    #[serde(rename = "u")]
    pub unicode: u32,
    /// Inserted by PDFium (a space between words, a line break), not drawn by the page.
    #[serde(rename = "g")]
    pub generated: bool,
    /// Drawn visibly (not text render mode 3, "invisible", as OCR tools write their layer).
    #[serde(rename = "v")]
    pub visible: bool,
    /// Its box's corners in raster pixels (top-left, top-right, bottom-right, bottom-left of
    /// the box in page space), as x0, y0, x1, y1, ...
    #[serde(rename = "q")]
    pub quad: [f32; 8],
    /// Its origin on the baseline, in raster pixels.
    #[serde(rename = "o")]
    pub origin: [f32; 2],
}

fn bad(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(
    w: &mut impl Write,
    header: &T,
    payload: &[u8],
) -> std::io::Result<()> {
    let h = serde_json::to_vec(header).map_err(|e| bad(e.to_string()))?;
    w.write_all(&(h.len() as u32).to_le_bytes())?;
    w.write_all(&h)?;
    w.write_all(&(payload.len() as u64).to_le_bytes())?;
    w.write_all(payload)?;
    w.flush()
}

/// Reads one frame; `None` at a clean end of the stream (before a frame starts).
pub fn read_frame<T: for<'de> Deserialize<'de>>(
    r: &mut impl Read,
) -> std::io::Result<Option<(T, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u64::from(u32::from_le_bytes(len));
    if n > MAX_HEADER {
        return Err(bad(format!("frame header of {n} bytes")));
    }
    let mut h = vec![0u8; n as usize];
    r.read_exact(&mut h)?;
    let header = serde_json::from_slice(&h).map_err(|e| bad(e.to_string()))?;
    let mut plen = [0u8; 8];
    r.read_exact(&mut plen)?;
    let p = u64::from_le_bytes(plen);
    if p > MAX_PAYLOAD {
        return Err(bad(format!("frame payload of {p} bytes")));
    }
    let mut payload = vec![0u8; p as usize];
    r.read_exact(&mut payload)?;
    Ok(Some((header, payload)))
}

/// The async side of [`write_frame`] and [`read_frame`], for the worker.
pub mod r#async {
    use serde::{Deserialize, Serialize};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use super::{bad, MAX_HEADER, MAX_PAYLOAD};

    pub async fn write_frame<T: Serialize>(
        w: &mut (impl AsyncWrite + Unpin),
        header: &T,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let h = serde_json::to_vec(header).map_err(|e| bad(e.to_string()))?;
        w.write_all(&(h.len() as u32).to_le_bytes()).await?;
        w.write_all(&h).await?;
        w.write_all(&(payload.len() as u64).to_le_bytes()).await?;
        w.write_all(payload).await?;
        w.flush().await
    }

    pub async fn read_frame<T: for<'de> Deserialize<'de>>(
        r: &mut (impl AsyncRead + Unpin),
    ) -> std::io::Result<(T, Vec<u8>)> {
        let n = u64::from(r.read_u32_le().await?);
        if n > MAX_HEADER {
            return Err(bad(format!("frame header of {n} bytes")));
        }
        let mut h = vec![0u8; n as usize];
        r.read_exact(&mut h).await?;
        let header = serde_json::from_slice(&h).map_err(|e| bad(e.to_string()))?;
        let p = r.read_u64_le().await?;
        if p > MAX_PAYLOAD {
            return Err(bad(format!("frame payload of {p} bytes")));
        }
        let mut payload = vec![0u8; p as usize];
        r.read_exact(&mut payload).await?;
        Ok((header, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bounds_hold() {
        let mut buf = Vec::new();
        let page = Request::Page {
            index: 3,
            dpi: 150.0,
            max_side: 4000,
            max_scan_dpi: 300.0,
        };
        write_frame(&mut buf, &page, b"").unwrap();
        write_frame(&mut buf, &Request::Open, b"%PDF-1.7").unwrap();
        let mut r = buf.as_slice();
        let (a, p): (Request, _) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((a, p.len()), (page, 0));
        let (b, p): (Request, _) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((b, p), (Request::Open, b"%PDF-1.7".to_vec()));
        assert!(
            read_frame::<Request>(&mut r).unwrap().is_none(),
            "clean end"
        );
        let huge = (u32::MAX).to_le_bytes();
        assert!(read_frame::<Request>(&mut huge.as_slice()).is_err());
    }
}
