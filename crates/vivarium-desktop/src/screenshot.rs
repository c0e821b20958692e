//! Screenshots: XShm (or GetImage) grab of the root window, BGRX→RGB, optional cursor, scaling and
//! PNG/JPEG/WebP encoding with fast settings.

use std::fs::File;
use std::os::fd::OwnedFd;

use tracing::debug;
use x11rb::connection::Connection;
use x11rb::protocol::shm::{self, ConnectionExt as _};
use x11rb::protocol::xfixes::ConnectionExt as _;
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::rust_connection::RustConnection;

use crate::desktop::{lock, Desktop, Rect};
use crate::error::{DesktopError, Result, XContext};

/// Output format of a screenshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    #[default]
    Png,
    Jpeg,
    /// Lossless WebP (the pure-Rust encoder has no lossy mode; `quality` is ignored).
    Webp,
}

impl ImageFormat {
    /// MIME type of the encoded image.
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
        }
    }
}

/// What to capture and how to encode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScreenshotOptions {
    pub format: ImageFormat,
    /// JPEG quality 1..=100 (default 80).
    pub quality: u8,
    /// Part of the screen to capture; `None` is the whole screen.
    pub region: Option<Rect>,
    /// Scale the captured image to this size (width, height).
    pub scale_to: Option<(u32, u32)>,
    /// Draw the mouse cursor into the image (needs XFIXES).
    pub cursor: bool,
}

impl Default for ScreenshotOptions {
    fn default() -> Self {
        ScreenshotOptions {
            format: ImageFormat::Png,
            quality: 80,
            region: None,
            scale_to: None,
            cursor: false,
        }
    }
}

/// An encoded screenshot.
#[derive(Debug, Clone)]
pub struct Screenshot {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Raw RGB8 pixels, row-major, no padding.
#[derive(Debug, Clone)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl RgbImage {
    /// The pixel at (x, y).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * self.width + x) * 3) as usize;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// A shared-memory segment attached to the X server (memfd passed with `ShmAttachFd`).
pub(crate) struct ShmSegment {
    seg: shm::Seg,
    map: memmap2::MmapMut,
}

impl ShmSegment {
    pub(crate) fn new(conn: &RustConnection, size: usize) -> Result<ShmSegment> {
        let fd: OwnedFd = nix::sys::memfd::memfd_create(
            c"vivarium-shm",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .map_err(|e| DesktopError::Shm(format!("memfd_create: {e}")))?;
        let file = File::from(fd);
        file.set_len(size as u64)
            .map_err(|e| DesktopError::Shm(format!("ftruncate: {e}")))?;
        // SAFETY: the memfd is private to this process and the X server; the server writes into it only
        // while we wait for a ShmGetImage reply, and we read it only after that reply arrived.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }
            .map_err(|e| DesktopError::Shm(format!("mmap: {e}")))?;
        let for_server = file
            .try_clone()
            .map_err(|e| DesktopError::Shm(format!("dup: {e}")))?;
        let seg = conn.generate_id()?;
        conn.shm_attach_fd(seg, OwnedFd::from(for_server), false)
            .ctx("ShmAttachFd")?
            .check()
            .map_err(|e| DesktopError::Shm(format!("ShmAttachFd refused: {e}")))?;
        Ok(ShmSegment { seg, map })
    }

    pub(crate) fn detach(self, conn: &RustConnection) {
        let _ = conn.shm_detach(self.seg);
    }
}

fn bgrx_to_rgb(src: &[u8], pixels: usize) -> Vec<u8> {
    let mut out = vec![0u8; pixels * 3];
    for (d, s) in out.chunks_exact_mut(3).zip(src.chunks_exact(4)) {
        d[0] = s[2];
        d[1] = s[1];
        d[2] = s[0];
    }
    out
}

impl Desktop {
    fn check_pixel_format(&self) -> Result<()> {
        let setup = self.conn.setup();
        let fmt = setup
            .pixmap_formats
            .iter()
            .find(|f| f.depth == self.root_depth);
        let screen = setup.roots.iter().find(|s| s.root == self.root);
        let visual = screen.and_then(|s| {
            s.allowed_depths
                .iter()
                .flat_map(|d| d.visuals.iter())
                .find(|v| v.visual_id == s.root_visual)
        });
        match (fmt, visual) {
            (Some(f), Some(v))
                if f.bits_per_pixel == 32
                    && setup.image_byte_order == xproto::ImageOrder::LSB_FIRST
                    && v.red_mask == 0xff0000
                    && v.green_mask == 0xff00
                    && v.blue_mask == 0xff =>
            {
                Ok(())
            }
            _ => Err(DesktopError::PixelFormat(format!(
                "root depth {} is not 32-bit BGRX little-endian",
                self.root_depth
            ))),
        }
    }

    /// Grab `region` (or the screen) as RGB8, with the cursor drawn in when `cursor` is set.
    pub fn capture_rgb(&self, region: Option<Rect>, cursor: bool) -> Result<RgbImage> {
        self.check_pixel_format()?;
        let size = self.screen_size()?;
        let r = region.unwrap_or(Rect {
            x: 0,
            y: 0,
            width: size.width,
            height: size.height,
        });
        if r.width == 0
            || r.height == 0
            || r.x < 0
            || r.y < 0
            || r.x as u64 + r.width as u64 > size.width as u64
            || r.y as u64 + r.height as u64 > size.height as u64
        {
            return Err(DesktopError::BadRegion {
                x: r.x,
                y: r.y,
                w: r.width,
                h: r.height,
                width: size.width,
                height: size.height,
            });
        }
        let pixels = r.width as usize * r.height as usize;
        let mut rgb = None;
        {
            let mut shm_guard = lock(&self.shm);
            if shm_guard.as_ref().is_some_and(|s| s.map.len() < pixels * 4) {
                if let Some(old) = shm_guard.take() {
                    old.detach(&self.conn);
                }
                *shm_guard = Some(ShmSegment::new(&self.conn, pixels * 4)?);
            }
            if let Some(seg) = shm_guard.as_ref() {
                let reply = self
                    .conn
                    .shm_get_image(
                        self.root,
                        r.x as i16,
                        r.y as i16,
                        r.width as u16,
                        r.height as u16,
                        !0,
                        xproto::ImageFormat::Z_PIXMAP.into(),
                        seg.seg,
                        0,
                    )
                    .ctx("ShmGetImage")?
                    .reply();
                match reply {
                    Ok(_) => rgb = Some(bgrx_to_rgb(&seg.map[..pixels * 4], pixels)),
                    Err(e) => {
                        debug!(error = %e, "ShmGetImage failed, falling back to GetImage");
                        if let Some(old) = shm_guard.take() {
                            old.detach(&self.conn);
                        }
                    }
                }
            }
        }
        let mut rgb = match rgb {
            Some(v) => v,
            None => {
                let reply = self
                    .conn
                    .get_image(
                        xproto::ImageFormat::Z_PIXMAP,
                        self.root,
                        r.x as i16,
                        r.y as i16,
                        r.width as u16,
                        r.height as u16,
                        !0,
                    )
                    .ctx("GetImage")?
                    .reply()
                    .ctx("GetImage")?;
                if reply.data.len() < pixels * 4 {
                    return Err(DesktopError::PixelFormat(format!(
                        "GetImage returned {} bytes for {pixels} pixels",
                        reply.data.len()
                    )));
                }
                bgrx_to_rgb(&reply.data, pixels)
            }
        };
        if cursor && self.has_xfixes {
            self.draw_cursor(&mut rgb, r)?;
        }
        Ok(RgbImage {
            width: r.width,
            height: r.height,
            rgb,
        })
    }

    fn draw_cursor(&self, rgb: &mut [u8], r: Rect) -> Result<()> {
        let cur = self
            .conn
            .xfixes_get_cursor_image()
            .ctx("XFixesGetCursorImage")?
            .reply()
            .ctx("XFixesGetCursorImage")?;
        let left = i32::from(cur.x) - i32::from(cur.xhot) - r.x;
        let top = i32::from(cur.y) - i32::from(cur.yhot) - r.y;
        for cy in 0..i32::from(cur.height) {
            let y = top + cy;
            if y < 0 || y >= r.height as i32 {
                continue;
            }
            for cx in 0..i32::from(cur.width) {
                let x = left + cx;
                if x < 0 || x >= r.width as i32 {
                    continue;
                }
                let p = cur.cursor_image[(cy * i32::from(cur.width) + cx) as usize];
                let a = p >> 24;
                if a == 0 {
                    continue;
                }
                let i = ((y as u32 * r.width + x as u32) * 3) as usize;
                // Premultiplied ARGB over RGB.
                for (k, shift) in [(0usize, 16u32), (1, 8), (2, 0)] {
                    let s = (p >> shift) & 0xff;
                    let d = u32::from(rgb[i + k]);
                    rgb[i + k] = (s + d * (255 - a) / 255).min(255) as u8;
                }
            }
        }
        Ok(())
    }

    /// Take a screenshot.
    pub fn screenshot(&self, opts: &ScreenshotOptions) -> Result<Screenshot> {
        let img = self.capture_rgb(opts.region, opts.cursor)?;
        let img = match opts.scale_to {
            Some((w, h)) if (w, h) != (img.width, img.height) => scale(&img, w, h)?,
            _ => img,
        };
        let data = encode(&img, opts.format, opts.quality)?;
        Ok(Screenshot {
            format: opts.format,
            width: img.width,
            height: img.height,
            data,
        })
    }
}

/// Resize RGB8 pixels with a bilinear convolution (fast_image_resize, SIMD).
pub(crate) fn scale(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    use fast_image_resize::{
        images::{Image, ImageRef},
        FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    };
    if width == 0 || height == 0 || width > 16384 || height > 16384 {
        return Err(DesktopError::BadSize {
            width,
            height,
            reason: "scale target must be 1..=16384 per side",
        });
    }
    let src = ImageRef::new(img.width, img.height, &img.rgb, PixelType::U8x3)
        .map_err(|e| DesktopError::Scale(e.to_string()))?;
    let mut dst = Image::new(width, height, PixelType::U8x3);
    Resizer::new()
        .resize(
            &src,
            &mut dst,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        )
        .map_err(|e| DesktopError::Scale(e.to_string()))?;
    Ok(RgbImage {
        width,
        height,
        rgb: dst.into_vec(),
    })
}

/// JPEG through libjpeg-turbo (SIMD, baseline, 4:2:0 chroma subsampling).
fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let err = |e: turbojpeg::Error| DesktopError::Encode {
        format: "JPEG",
        message: e.to_string(),
    };
    // JPEG headers store 16-bit dimensions.
    if img.width > u16::MAX as u32 || img.height > u16::MAX as u32 {
        return Err(DesktopError::BadSize {
            width: img.width,
            height: img.height,
            reason: "too large for JPEG",
        });
    }
    let width = img.width as usize;
    let mut compressor = turbojpeg::Compressor::new().map_err(err)?;
    compressor.set_quality(i32::from(quality.clamp(1, 100)));
    compressor.set_subsamp(turbojpeg::Subsamp::Sub2x2);
    // The compressed bytes live in a buffer libjpeg-turbo allocated; one copy into a Vec keeps the
    // public `Vec<u8>` API (the copy is ~0.02 ms for a screen-sized JPEG).
    compressor
        .compress_to_vec(turbojpeg::Image {
            pixels: img.rgb.as_slice(),
            width,
            pitch: width * 3,
            height: img.height as usize,
            format: turbojpeg::PixelFormat::RGB,
        })
        .map_err(err)
}

/// Encode RGB8 pixels.
pub(crate) fn encode(img: &RgbImage, format: ImageFormat, quality: u8) -> Result<Vec<u8>> {
    if format == ImageFormat::Jpeg {
        return encode_jpeg(img, quality);
    }
    let mut out = Vec::with_capacity(img.rgb.len() / 4);
    match format {
        ImageFormat::Jpeg => return encode_jpeg(img, quality),
        ImageFormat::Png => {
            let err = |e: png::EncodingError| DesktopError::Encode {
                format: "PNG",
                message: e.to_string(),
            };
            let mut enc = png::Encoder::new(&mut out, img.width, img.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            // Fast = fdeflate's fast mode; the Up filter keeps screen content compressible at little cost.
            enc.set_compression(png::Compression::Fast);
            enc.set_filter(png::FilterType::Up);
            enc.set_adaptive_filter(png::AdaptiveFilterType::NonAdaptive);
            let mut w = enc.write_header().map_err(err)?;
            w.write_image_data(&img.rgb).map_err(err)?;
            w.finish().map_err(err)?;
        }
        ImageFormat::Webp => {
            image_webp::WebPEncoder::new(&mut out)
                .encode(&img.rgb, img.width, img.height, image_webp::ColorType::Rgb8)
                .map_err(|e| DesktopError::Encode {
                    format: "WebP",
                    message: e.to_string(),
                })?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gradient with a solid block, at an odd size (not a multiple of the 16x16 MCU).
    fn test_image(width: u32, height: u32) -> RgbImage {
        let mut rgb = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                if x < 40 && y < 40 {
                    rgb.extend_from_slice(&[0x12, 0xc4, 0x56]);
                } else {
                    rgb.extend_from_slice(&[
                        (x % 256) as u8,
                        (y % 256) as u8,
                        ((x + y) % 256) as u8,
                    ]);
                }
            }
        }
        RgbImage { width, height, rgb }
    }

    #[test]
    fn jpeg_decodes_with_size_colour_and_quality() {
        let img = test_image(333, 201);
        let hi = encode(&img, ImageFormat::Jpeg, 95).unwrap();
        let lo = encode(&img, ImageFormat::Jpeg, 10).unwrap();
        assert_eq!(&hi[..3], &[0xff, 0xd8, 0xff], "JPEG SOI marker");
        assert!(
            lo.len() < hi.len(),
            "quality 10 ({}) vs 95 ({})",
            lo.len(),
            hi.len()
        );
        let decoded = image::load_from_memory(&hi).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (333, 201));
        let p = decoded.get_pixel(20, 20).0;
        assert!(
            p.iter()
                .zip([0x12u8, 0xc4, 0x56])
                .all(|(a, b)| a.abs_diff(b) < 8),
            "solid block pixel {p:?}"
        );
        // Out-of-range quality is clamped rather than rejected.
        assert!(encode(&img, ImageFormat::Jpeg, 0).is_ok());
    }

    #[test]
    fn jpeg_rejects_sizes_beyond_the_header_limit() {
        let img = RgbImage {
            width: 70_000,
            height: 1,
            rgb: vec![0; 70_000 * 3],
        };
        assert!(matches!(
            encode(&img, ImageFormat::Jpeg, 80),
            Err(DesktopError::BadSize { .. })
        ));
    }
}
