//! `image_classification`: a class for an image of any size and channel count, one flat H*W*C
//! array per record (JSONL, npz or safetensors), cut into square patches.
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::files::{classes, read_records, record_images, Loaded};
use super::images::ImageTransform;
use super::samples::Form;
use super::spec::{bad, check};
use super::{DataSources, Fitted, SpecError, Task, TaskData, TaskLimits, TaskSpec};
use crate::data::records::{InputSpec, RecordSpec};
use crate::model::fpt::HeadShape;

fn one_channel() -> usize {
    1
}

fn patch_of_four() -> usize {
    4
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageClassification {
    pub height: usize,
    pub width: usize,
    #[serde(default = "one_channel")]
    pub channels: usize,
    #[serde(default = "patch_of_four")]
    pub patch_size: usize,
    pub num_classes: usize,
}

impl ImageClassification {
    fn transform(&self) -> ImageTransform {
        ImageTransform { patch: self.patch_size as i64, mean: vec![0.0; self.channels], std: vec![1.0; self.channels], augment: None }
    }
}

impl Task for ImageClassification {
    fn validate(&self, limits: &TaskLimits) -> Result<(), SpecError> {
        check::within("height", self.height, 1, limits.max_image_side)?;
        check::within("width", self.width, 1, limits.max_image_side)?;
        check::within("channels", self.channels, 1, limits.max_channels)?;
        // Each factor is bounded above, so the product cannot overflow.
        if self.height * self.width * self.channels > limits.max_image_values {
            return Err(bad("height", format!("height x width x channels must be at most {}", limits.max_image_values)));
        }
        if self.patch_size == 0 || !self.height.is_multiple_of(self.patch_size) || !self.width.is_multiple_of(self.patch_size) {
            return Err(bad(
                "patch_size",
                format!("height {} and width {} must be positive multiples of patch_size {}", self.height, self.width, self.patch_size),
            ));
        }
        check::classes(self.num_classes, limits)
    }

    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        let tokens_needed = (self.height / self.patch_size) * (self.width / self.patch_size);
        if tokens_needed > src.max_positions {
            bail!("task `image_classification` needs {tokens_needed} tokens, the backbone has {} positions", src.max_positions);
        }
        let rs = RecordSpec {
            input: InputSpec::Continuous { token_dim: Some(self.height * self.width * self.channels) },
            num_classes: Some(self.num_classes),
            ..RecordSpec::default()
        };
        let t = self.transform();
        let dims = [self.height as i64, self.width as i64, self.channels as i64];
        let read = |p: &Path| read_records(p, &rs).and_then(|r| record_images(&r, dims, &t).with_context(|| p.display().to_string()));
        let loaded = Loaded {
            train: read(src.train.expect("checked by TaskData::load"))?,
            valid: src.valid.map(read).transpose()?,
            test: src.test.map(read).transpose()?,
            shape: classes((self.patch_size * self.patch_size * self.channels) as i64, self.num_classes as i64),
            truncated: 0,
            label_names: None,
        };
        loaded.finish(spec, src)
    }

    fn sample_form(&self, _shape: &HeadShape, _fitted: &Fitted) -> Form {
        Form::Image { h: self.height as i64, w: self.width as i64, c: self.channels as i64, scale: 1.0, transform: self.transform() }
    }
}
