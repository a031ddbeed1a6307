//! Image handling for the model services, in pure Rust: bounded decoding of untrusted PNG and
//! JPEG bytes, Ultralytics' letterbox (with OpenCV's bilinear resize reproduced), overlapping
//! tiles and padded crops, box geometry and torchvision-style NMS, and the OpenCV geometry of
//! PaddleOCR's text detection (binary-map regions, rotated rectangles, perspective crops).
//!
//! The detector and OCR services build their pre- and post-processing on this crate; keeping it
//! free of libtorch keeps it fast to test and safe to fuzz.
#![forbid(unsafe_code)]

pub mod contours;
pub mod contrast;
pub mod decode;
pub mod geometry;
pub mod letterbox;
pub mod quad;
pub mod resize;
pub mod tiles;

pub use contrast::normalize_contrast;
pub use decode::{DecodeError, DecodedImage, Limits, decode};
pub use geometry::{BoxF, batched_nms, nms};
pub use letterbox::{Letterboxed, PAD_VALUE, letterbox, paste, to_nchw_f32};
pub use resize::resize_linear;
pub use tiles::{crop, tile_grid};
