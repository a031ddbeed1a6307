//! Decoding untrusted PNG and JPEG bytes into RGB8, refusing oversized input before it costs
//! memory.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

/// How much one request may make the decoder read and allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded input accepted, in bytes.
    pub max_bytes: usize,
    /// Largest `width * height` accepted, checked against the header before any pixel is
    /// decoded.
    pub max_pixels: u64,
}

impl Default for Limits {
    /// 20 MiB of input and 40 megapixels: a 600 dpi scan of an A1 drawing still fits.
    fn default() -> Self {
        Self {
            max_bytes: 20 * 1024 * 1024,
            max_pixels: 40_000_000,
        }
    }
}

impl Limits {
    /// The `image` crate's own limits, a second guard behind the header check: no dimension
    /// above `max_pixels`, no allocation above 8 bytes a pixel (16-bit RGBA, the widest PNG
    /// output) plus the RGB8 copy made at the end.
    fn image_limits(&self) -> image::Limits {
        let side = u32::try_from(self.max_pixels).unwrap_or(u32::MAX);
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(side);
        limits.max_image_height = Some(side);
        limits.max_alloc = Some(self.max_pixels.saturating_mul(8 + 3));
        limits
    }
}

/// A decoded image, always 8-bit RGB.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// The pixels, after the JPEG EXIF orientation (if any) has been applied.
    pub image: RgbImage,
    pub width: u32,
    pub height: u32,
}

/// Why bytes were not turned into an image.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the image is empty (0 bytes)")]
    Empty,
    #[error("the image is {bytes} bytes, over the limit of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    #[error("the image is {width}x{height} pixels, over the limit of {max} pixels")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    #[error("not a PNG or JPEG")]
    UnknownFormat,
    /// A well-formed PNG or JPEG using a feature the decoder lacks (say, arithmetic coding).
    #[error("unsupported PNG or JPEG variant: {0}")]
    Unsupported(String),
    /// Truncated or malformed data.
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
}

/// Decodes a PNG or JPEG into RGB8.
///
/// The header is read first and the image refused when its declared `width * height` is over
/// `limits.max_pixels`, so a small file declaring 20000x20000 costs nothing. Transparent
/// pixels are composited onto white (as RapidOCR does, unlike OpenCV's `imread`, which drops
/// alpha), and 16-bit samples are scaled to 8 bits.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<DecodedImage, DecodeError> {
    let Header {
        mut decoder,
        format,
        width,
        height,
    } = header(bytes, limits)?;
    let too_many = || DecodeError::TooManyPixels {
        width,
        height,
        max: limits.max_pixels,
    };
    let image_limits = limits.image_limits();
    if decoder.total_bytes() > image_limits.max_alloc.unwrap_or(u64::MAX) {
        return Err(too_many());
    }
    decoder
        .set_limits(image_limits)
        .map_err(|e| classify(e, Some(too_many())))?;
    // A broken EXIF block is no reason to refuse the pixels.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| classify(e, Some(too_many())))?;
    if format == Some(ImageFormat::Jpeg) {
        check_jpeg_complete(bytes)?;
    }
    image.apply_orientation(orientation);
    let image = over_white(image);
    Ok(DecodedImage {
        width: image.width(),
        height: image.height(),
        image,
    })
}

/// RGB8 with any alpha composited onto white, as RapidOCR reads a page: a drawing
/// exported with a transparent background is ink on nothing, and dropping the alpha
/// would turn the nothing black (OpenCV's `imread`) and hide black ink on it.
fn over_white(image: DynamicImage) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    let samples = match image {
        // 16-bit PNGs keep their precision until the one rounding to 8 bits.
        DynamicImage::ImageRgba16(rgba) => composite(rgba.as_raw(), f32::from(u16::MAX)),
        image if image.color().has_alpha() => {
            composite(image.into_rgba8().as_raw(), f32::from(u8::MAX))
        }
        // Drawings are mostly 8-bit grey: through the image crate's general conversion a
        // 1600x1200 grey page took 18-29 ms to decode, with this copy 2-3 ms
        // (examples/bench_vision.rs).
        DynamicImage::ImageLuma8(gray) => return grey_to_rgb(&gray),
        image => return image.into_rgb8(),
    };
    RgbImage::from_raw(width, height, samples).expect("three samples for each RGBA pixel")
}

/// Each grey sample as three equal RGB samples.
fn grey_to_rgb(gray: &image::GrayImage) -> RgbImage {
    let samples = gray.as_raw().iter().flat_map(|&v| [v; 3]).collect();
    RgbImage::from_raw(gray.width(), gray.height(), samples)
        .expect("three samples for each grey one")
}

/// `colour × alpha + white × (1 − alpha)` for each RGBA pixel of `samples` (full scale
/// `max`), as RGB8 samples.
fn composite<S: Copy + Into<f32>>(samples: &[S], max: f32) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() / 4 * 3);
    for pixel in samples.chunks_exact(4) {
        let alpha = pixel[3].into() / max;
        for &colour in &pixel[..3] {
            let over = colour.into() / max * alpha + (1.0 - alpha);
            // In [0, 255] by construction, so the cast cannot wrap.
            out.push((over * 255.0).round() as u8);
        }
    }
    out
}

/// Width and height from the header alone, refused exactly as [`decode`] would refuse
/// them, for a caller that passes the bytes on and never needs the pixels. They are the
/// displayed size, as [`decode`] reports it: a JPEG whose EXIF orientation turns it a
/// quarter turn has its stored width and height swapped.
pub fn dimensions(bytes: &[u8], limits: &Limits) -> Result<(u32, u32), DecodeError> {
    let Header {
        mut decoder,
        width,
        height,
        ..
    } = header(bytes, limits)?;
    // As in `decode`, a broken EXIF block counts as no rotation.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    Ok(if quarter_turn(orientation) {
        (height, width)
    } else {
        (width, height)
    })
}

/// Whether applying `orientation` swaps width and height.
fn quarter_turn(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// A parsed header that passed the byte, format and pixel checks.
struct Header<D> {
    decoder: D,
    format: Option<ImageFormat>,
    width: u32,
    height: u32,
}

fn header<'a>(
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<Header<impl ImageDecoder + 'a>, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            bytes: bytes.len(),
            max: limits.max_bytes,
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let format = reader.format();
    if !matches!(format, Some(ImageFormat::Png | ImageFormat::Jpeg)) {
        return Err(DecodeError::UnknownFormat);
    }
    // The allocation budget applies while the header is parsed (PNG text and ICC chunks are
    // inflated there); the dimension limits wait until the header check below has had the
    // chance to refuse with the dimensions in the error.
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = limits.image_limits().max_alloc;
    reader.limits(header_limits);
    let decoder = reader.into_decoder().map_err(|e| classify(e, None))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(DecodeError::TooManyPixels {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt(format!(
            "declared size {width}x{height}"
        )));
    }
    Ok(Header {
        decoder,
        format,
        width,
        height,
    })
}

fn classify(error: ImageError, over_limit: Option<DecodeError>) -> DecodeError {
    match error {
        ImageError::Limits(e) => over_limit.unwrap_or_else(|| DecodeError::Corrupt(e.to_string())),
        ImageError::Unsupported(e) => DecodeError::Unsupported(e.to_string()),
        other => DecodeError::Corrupt(other.to_string()),
    }
}

/// The JPEG decoder runs in lenient mode and fills a truncated scan with grey instead of
/// failing, so completeness is checked here: the last start-of-scan marker must be followed
/// by an end-of-image marker. Inside entropy-coded data a 0xFF byte is always stuffed
/// (followed by 0x00 or a restart marker), so neither marker can appear there by accident; an
/// EXIF thumbnail's own markers come before the main image's scans.
fn check_jpeg_complete(bytes: &[u8]) -> Result<(), DecodeError> {
    const SOS: [u8; 2] = [0xFF, 0xDA];
    const EOI: [u8; 2] = [0xFF, 0xD9];
    let last_scan = bytes.windows(2).rposition(|w| w == SOS);
    let complete = last_scan.is_some_and(|at| bytes[at..].windows(2).any(|w| w == EOI));
    if complete {
        Ok(())
    } else {
        Err(DecodeError::Corrupt(
            "JPEG data ends before the end-of-image marker".to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {

    use image::{ImageEncoder, Rgb, RgbImage};

    use super::*;

    #[test]
    fn grey_pages_become_rgb_as_the_image_crate_converts_them() {
        let gray = image::GrayImage::from_fn(41, 17, |x, y| image::Luma([(x * 13 + y * 29) as u8]));
        let ours = over_white(DynamicImage::ImageLuma8(gray.clone()));
        assert_eq!(ours, DynamicImage::ImageLuma8(gray).into_rgb8());
    }

    fn test_image() -> RgbImage {
        RgbImage::from_fn(37, 23, |x, y| Rgb([(x * 7) as u8, (y * 11) as u8, 200]))
    }

    fn png_bytes(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(
                image.as_raw(),
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        out
    }

    fn jpeg_bytes(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(
                image.as_raw(),
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        out
    }

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
        out
    }

    /// A well-formed PNG header declaring `width x height` RGB8, with one tiny IDAT.
    fn png_declaring(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, no filter, no interlace
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend(chunk(b"IHDR", &ihdr));
        // A zlib stream holding one empty stored block: decodes to nothing.
        out.extend(chunk(
            b"IDAT",
            &[0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0, 0, 0, 1],
        ));
        out.extend(chunk(b"IEND", &[]));
        out
    }

    #[test]
    fn decodes_png_and_jpeg() {
        let source = test_image();
        let png = decode(&png_bytes(&source), &Limits::default()).unwrap();
        assert_eq!((png.width, png.height), (37, 23));
        assert_eq!(png.image, source, "PNG is lossless");
        let jpeg = decode(&jpeg_bytes(&source), &Limits::default()).unwrap();
        assert_eq!((jpeg.width, jpeg.height), (37, 23));
    }

    /// `jpeg` with an APP1 EXIF segment right after its start-of-image marker, holding
    /// one IFD entry: Orientation (0x0112) = `orientation`.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec(); // big-endian, IFD at offset 8
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // one value
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]); // the value field's padding
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend(tiff);
        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
        out.extend(payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn a_quarter_turned_jpeg_reports_its_displayed_size() {
        let limits = Limits::default();
        let jpeg = jpeg_bytes(&test_image());
        let rotated = with_exif_orientation(&jpeg, 6); // displayed turned 90° clockwise
        let decoded = decode(&rotated, &limits).unwrap();
        assert_eq!((decoded.width, decoded.height), (23, 37));
        assert_eq!(dimensions(&rotated, &limits), Ok((23, 37)));
        // Half a turn keeps the sides; no EXIF keeps them too.
        assert_eq!(
            dimensions(&with_exif_orientation(&jpeg, 3), &limits),
            Ok((37, 23))
        );
        assert_eq!(dimensions(&jpeg, &limits), Ok((37, 23)));
    }

    #[test]
    fn dimensions_come_from_the_header_with_decodes_refusals() {
        let limits = Limits::default();
        let png = png_bytes(&test_image());
        assert_eq!(dimensions(&png, &limits), Ok((37, 23)));
        let huge = png_declaring(20_000, 20_000);
        assert_eq!(
            dimensions(&huge, &limits),
            decode(&huge, &limits).map(|_| (0, 0))
        );
        assert_eq!(dimensions(b"", &limits), Err(DecodeError::Empty));
        assert_eq!(
            dimensions(b"plain text, not an image", &limits),
            Err(DecodeError::UnknownFormat)
        );
    }

    fn png_of(pixels: &[u8], width: u32, height: u32, kind: image::ExtendedColorType) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(pixels, width, height, kind)
            .unwrap();
        out
    }

    #[test]
    fn transparency_is_composited_onto_white_and_grey_expanded() {
        // Transparent, opaque, and half-transparent black.
        let rgba = png_of(
            &[10, 20, 30, 0, 40, 50, 60, 255, 0, 0, 0, 128],
            3,
            1,
            image::ExtendedColorType::Rgba8,
        );
        let decoded = decode(&rgba, &Limits::default()).unwrap();
        assert_eq!(
            decoded.image.as_raw(),
            &[255, 255, 255, 40, 50, 60, 127, 127, 127]
        );

        // Grey with alpha, 8 and 16 bits: transparent, then opaque black.
        let grey_alpha = png_of(&[7, 0, 0, 255], 2, 1, image::ExtendedColorType::La8);
        let decoded = decode(&grey_alpha, &Limits::default()).unwrap();
        assert_eq!(decoded.image.as_raw(), &[255, 255, 255, 0, 0, 0]);
        let rgba16: Vec<u8> = [0u16, 0, 0, 0, 0, 0, 0, 0xFFFF]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let decoded = decode(
            &png_of(&rgba16, 2, 1, image::ExtendedColorType::Rgba16),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(decoded.image.as_raw(), &[255, 255, 255, 0, 0, 0]);

        let out = png_of(&[7, 9], 1, 2, image::ExtendedColorType::L8);
        let decoded = decode(&out, &Limits::default()).unwrap();
        assert_eq!(decoded.image.as_raw(), &[7, 7, 7, 9, 9, 9]);
    }

    #[test]
    fn empty_input_is_refused() {
        assert_eq!(
            decode(&[], &Limits::default()).unwrap_err(),
            DecodeError::Empty
        );
    }

    #[test]
    fn random_bytes_are_not_an_image() {
        // A fixed xorshift stream: deterministic "random" bytes.
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let err = decode(&bytes, &Limits::default()).unwrap_err();
        assert_eq!(err, DecodeError::UnknownFormat);
        assert_eq!(err.to_string(), "not a PNG or JPEG");
        // Other formats the image crate knows are refused too.
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert_eq!(
            decode(gif, &Limits::default()).unwrap_err(),
            DecodeError::UnknownFormat
        );
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let bytes = png_bytes(&test_image());
        for cut in [bytes.len() / 2, bytes.len() - 13, 20, 9] {
            let err = decode(&bytes[..cut], &Limits::default()).unwrap_err();
            assert!(
                matches!(err, DecodeError::Corrupt(_)),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn truncated_jpeg_is_corrupt() {
        let bytes = jpeg_bytes(&test_image());
        for cut in [bytes.len() - 2, bytes.len() * 3 / 4, bytes.len() / 2, 30, 4] {
            let err = decode(&bytes[..cut], &Limits::default()).unwrap_err();
            assert!(
                matches!(err, DecodeError::Corrupt(_)),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn huge_declared_png_is_refused_from_the_header() {
        // Under 100 bytes cannot hold 400 megapixels: the refusal comes from the header.
        let bytes = png_declaring(20_000, 20_000);
        assert!(bytes.len() < 100);
        let err = decode(&bytes, &Limits::default()).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooManyPixels {
                width: 20_000,
                height: 20_000,
                max: 40_000_000
            }
        );
        assert_eq!(
            err.to_string(),
            "the image is 20000x20000 pixels, over the limit of 40000000 pixels"
        );
        // A wide, short image is counted by area, not by side.
        let tight = Limits {
            max_pixels: 1000,
            ..Limits::default()
        };
        assert!(matches!(
            decode(&png_declaring(1001, 1), &tight),
            Err(DecodeError::TooManyPixels { width: 1001, .. })
        ));
    }

    #[test]
    fn crafted_header_within_limits_is_corrupt_not_a_panic() {
        // The same crafted file at an allowed size: the IDAT holds no pixels.
        let err = decode(&png_declaring(64, 64), &Limits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt(_)), "{err:?}");
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let limits = Limits {
            max_bytes: 100,
            ..Limits::default()
        };
        let err = decode(&[0u8; 101], &limits).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooLarge {
                bytes: 101,
                max: 100
            }
        );
        assert_eq!(
            err.to_string(),
            "the image is 101 bytes, over the limit of 100 bytes"
        );
    }

    #[test]
    fn pixel_limit_applies_to_real_images() {
        let limits = Limits {
            max_pixels: 37 * 23 - 1,
            ..Limits::default()
        };
        for bytes in [png_bytes(&test_image()), jpeg_bytes(&test_image())] {
            assert!(matches!(
                decode(&bytes, &limits),
                Err(DecodeError::TooManyPixels {
                    width: 37,
                    height: 23,
                    ..
                })
            ));
        }
    }
}
