//! Reading crops: the angle classifier turns upside-down crops, then the recognizer
//! reads every crop, in RapidOCR's batches, all batches in flight at once so the
//! engine can group them.

use image::RgbImage;
use plenum_engine::tch::{Kind, Tensor};
use plenum_engine::{Engine, EngineError};

use crate::text::{self, CLS_THRESHOLD, CLS_WIDTH, REC_HEIGHT, RecWidth};

/// What one crop said.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognized {
    pub text: String,
    pub score: f32,
    /// The classifier judged the crop upside down and it was read turned 180°.
    pub rotated: bool,
}

/// The recognition and angle models, with the recognizer's dictionary.
#[derive(Clone)]
pub struct Reader {
    rec: Engine,
    cls: Engine,
    dictionary: std::sync::Arc<Vec<String>>,
}

impl Reader {
    pub fn new(rec: Engine, cls: Engine, dictionary: Vec<String>) -> Self {
        Self {
            rec,
            cls,
            dictionary: std::sync::Arc::new(dictionary),
        }
    }

    pub fn rec(&self) -> &Engine {
        &self.rec
    }

    /// Reads `crops` (turning those the classifier finds upside down when
    /// `classify_angle`), each batch at the width `width` gives it.
    pub async fn recognize(
        &self,
        mut crops: Vec<RgbImage>,
        classify_angle: bool,
        width: RecWidth,
    ) -> Result<Vec<Recognized>, EngineError> {
        let mut rotated = vec![false; crops.len()];
        if classify_angle {
            for (index, turn) in self.upside_down(&crops).await?.into_iter().enumerate() {
                if turn {
                    crops[index] = image::imageops::rotate180(&crops[index]);
                    rotated[index] = true;
                }
            }
        }
        let batches = text::batches(&crops);
        let calls = batches.iter().map(|batch| {
            let images: Vec<&RgbImage> = batch.iter().map(|&index| &crops[index]).collect();
            let input = tensor(&images, text::rec_width(&images, width));
            self.rec.infer(input)
        });
        let outputs = futures::future::join_all(calls).await;
        let mut results = vec![
            Recognized {
                text: String::new(),
                score: 0.0,
                rotated: false
            };
            crops.len()
        ];
        for (batch, output) in batches.iter().zip(outputs) {
            let output = output?.to_kind(Kind::Float).contiguous();
            let (steps, classes) = (output.size()[1] as usize, output.size()[2] as usize);
            let values: Vec<f32> = output
                .view([-1])
                .try_into()
                .map_err(|e: plenum_engine::tch::TchError| EngineError::Inference(e.to_string()))?;
            for (row, &index) in batch.iter().enumerate() {
                let rows = &values[row * steps * classes..(row + 1) * steps * classes];
                let (text, score) = text::ctc_decode(rows, steps, classes, &self.dictionary);
                results[index] = Recognized {
                    text,
                    score,
                    rotated: rotated[index],
                };
            }
        }
        Ok(results)
    }

    /// Which crops the classifier says are upside down (label "180" above 0.9).
    async fn upside_down(&self, crops: &[RgbImage]) -> Result<Vec<bool>, EngineError> {
        let batches = text::batches(crops);
        let calls = batches.iter().map(|batch| {
            let images: Vec<&RgbImage> = batch.iter().map(|&index| &crops[index]).collect();
            self.cls.infer(tensor(&images, CLS_WIDTH))
        });
        let outputs = futures::future::join_all(calls).await;
        let mut turn = vec![false; crops.len()];
        for (batch, output) in batches.iter().zip(outputs) {
            let output = output?.to_kind(Kind::Float).contiguous();
            let values: Vec<f32> = output
                .view([-1])
                .try_into()
                .map_err(|e: plenum_engine::tch::TchError| EngineError::Inference(e.to_string()))?;
            for (row, &index) in batch.iter().enumerate() {
                let (upright, flipped) = (values[row * 2], values[row * 2 + 1]);
                turn[index] = flipped > upright && flipped > CLS_THRESHOLD;
            }
        }
        Ok(turn)
    }
}

fn tensor(images: &[&RgbImage], width: u32) -> Tensor {
    let mut data = Vec::with_capacity(images.len() * 3 * (REC_HEIGHT * width) as usize);
    for image in images {
        text::normalise_into(image, width, &mut data);
    }
    Tensor::from_slice(&data).view([
        images.len() as i64,
        3,
        i64::from(REC_HEIGHT),
        i64::from(width),
    ])
}
