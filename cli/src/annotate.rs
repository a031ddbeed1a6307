//! The annotated copy of a drawing: a box per symbol in its class's colour, the
//! class and tag written above it, and a thin box where the tag was read. Text is
//! drawn with a built-in 8×8 bitmap font so no font file has to be found at run time.

use std::path::Path;

use anyhow::Context;
use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};
use plenum_proto::common::v1::Box as PbBox;
use plenum_proto::gateway::v1::Symbol;

const PALETTE: [Rgb<u8>; 6] = [
    Rgb([230, 25, 75]),
    Rgb([0, 130, 200]),
    Rgb([60, 180, 75]),
    Rgb([245, 130, 48]),
    Rgb([145, 30, 180]),
    Rgb([0, 128, 128]),
];
const TAG_COLOUR: Rgb<u8> = Rgb([120, 120, 120]);
const TEXT_SCALE: u32 = 2;

/// Decodes `image`, draws `symbols` on it and writes a PNG to `out`.
pub fn write(image: &[u8], symbols: &[Symbol], out: &Path) -> anyhow::Result<()> {
    let mut canvas = image::load_from_memory(image)
        .context("the image no longer decodes")?
        .to_rgb8();
    draw(&mut canvas, symbols);
    canvas
        .save(out)
        .with_context(|| format!("cannot write {}", out.display()))
}

pub fn draw(canvas: &mut RgbImage, symbols: &[Symbol]) {
    for symbol in symbols {
        let colour = colour_of(&symbol.class_name);
        if let Some(tag_box) = &symbol.tag_box {
            rectangle(canvas, tag_box, TAG_COLOUR, 1);
        }
        let Some(b) = &symbol.r#box else { continue };
        rectangle(canvas, b, colour, 2);
        let label = if symbol.tag.is_empty() {
            symbol.class_name.clone()
        } else {
            format!("{} {}", symbol.class_name, symbol.tag)
        };
        let height = 8 * TEXT_SCALE + 2;
        let x = b.x_min.max(0.0) as u32;
        let y = (b.y_min as i64 - i64::from(height) - 1).max(0) as u32;
        text(canvas, x, y, &label, colour);
    }
}

/// The same colour for a class in every image: a hash of its name picks it.
fn colour_of(class: &str) -> Rgb<u8> {
    let hash = class
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    PALETTE[hash as usize % PALETTE.len()]
}

fn rectangle(canvas: &mut RgbImage, b: &PbBox, colour: Rgb<u8>, thickness: i64) {
    let (w, h) = (i64::from(canvas.width()), i64::from(canvas.height()));
    let clamp_x = |v: f32| (v.round() as i64).clamp(0, w - 1);
    let clamp_y = |v: f32| (v.round() as i64).clamp(0, h - 1);
    let (x0, x1, y0, y1) = (
        clamp_x(b.x_min),
        clamp_x(b.x_max),
        clamp_y(b.y_min),
        clamp_y(b.y_max),
    );
    let mut put = |x: i64, y: i64| {
        if (0..w).contains(&x) && (0..h).contains(&y) {
            canvas.put_pixel(x as u32, y as u32, colour);
        }
    };
    for t in 0..thickness {
        for x in x0..=x1 {
            put(x, y0 - t);
            put(x, y1 + t);
        }
        for y in y0..=y1 {
            put(x0 - t, y);
            put(x1 + t, y);
        }
    }
}

/// White-backed text so it stays readable over drawing lines.
fn text(canvas: &mut RgbImage, x: u32, y: u32, label: &str, colour: Rgb<u8>) {
    let (w, h) = canvas.dimensions();
    let advance = 8 * TEXT_SCALE;
    let width = advance * label.chars().count() as u32 + 2;
    for py in y..(y + 8 * TEXT_SCALE + 2).min(h) {
        for px in x..(x + width).min(w) {
            canvas.put_pixel(px, py, Rgb([255, 255, 255]));
        }
    }
    for (index, ch) in label.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS.get(ch).unwrap_or([0; 8]);
        let left = x + 1 + index as u32 * advance;
        for (row, bits) in glyph.iter().enumerate() {
            for column in 0..8u32 {
                if bits & (1 << column) == 0 {
                    continue;
                }
                for dy in 0..TEXT_SCALE {
                    for dx in 0..TEXT_SCALE {
                        let px = left + column * TEXT_SCALE + dx;
                        let py = y + 1 + row as u32 * TEXT_SCALE + dy;
                        if px < w && py < h {
                            canvas.put_pixel(px, py, colour);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbol(tag: &str) -> Symbol {
        Symbol {
            r#box: Some(PbBox {
                x_min: 40.0,
                y_min: 40.0,
                x_max: 80.0,
                y_max: 70.0,
            }),
            class_name: "vav_box".into(),
            score: 0.9,
            tag: tag.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_box_is_drawn_on_its_edges_in_the_class_colour_and_the_label_above_it() {
        let mut canvas = RgbImage::from_pixel(200, 100, Rgb([255, 255, 255]));
        draw(&mut canvas, &[symbol("VAV-203")]);
        let colour = colour_of("vav_box");
        assert_eq!(*canvas.get_pixel(40, 55), colour, "left edge");
        assert_eq!(*canvas.get_pixel(60, 70), colour, "bottom edge");
        assert_eq!(
            *canvas.get_pixel(60, 55),
            Rgb([255, 255, 255]),
            "inside untouched"
        );
        let label_ink = (40..200)
            .flat_map(|x| (0..39).map(move |y| (x, y)))
            .filter(|&(x, y)| *canvas.get_pixel(x, y) == colour)
            .count();
        assert!(label_ink > 50, "the label is written above the box");
    }

    #[test]
    fn boxes_past_the_edge_are_clipped_not_a_panic() {
        let mut canvas = RgbImage::from_pixel(50, 50, Rgb([255, 255, 255]));
        let mut s = symbol("");
        s.r#box = Some(PbBox {
            x_min: -20.0,
            y_min: -5.0,
            x_max: 400.0,
            y_max: 300.0,
        });
        draw(&mut canvas, &[s]);
        assert_eq!(*canvas.get_pixel(0, 25), colour_of("vav_box"));
    }
}
