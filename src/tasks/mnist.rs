//! `mnist`: the paper's MNIST, 28x28 greyscale digits cut into patches, from IDX files.
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::files::{check_classes, classes, image_splits, read_mnist, Loaded};
use super::images::ImageTransform;
use super::samples::Form;
use super::spec::bad;
use super::{DataSources, Fitted, SpecError, Task, TaskData, TaskLimits, TaskSpec};
use crate::model::fpt::HeadShape;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mnist {
    /// The paper's 4x4 (49 tokens of 16); 7 gives 16 tokens of 49, a third of the compute.
    pub patch_size: usize,
}

impl Default for Mnist {
    fn default() -> Self {
        Self { patch_size: 4 }
    }
}

impl Mnist {
    fn transform(&self) -> ImageTransform {
        ImageTransform { patch: self.patch_size as i64, mean: vec![0.0], std: vec![1.0], augment: None }
    }
}

impl Task for Mnist {
    fn validate(&self, _limits: &TaskLimits) -> Result<(), SpecError> {
        if self.patch_size == 0 || 28 % self.patch_size != 0 {
            return Err(bad("patch_size", format!("{} does not divide the 28-pixel side (1, 2, 4, 7, 14 or 28)", self.patch_size)));
        }
        Ok(())
    }

    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        let t = self.transform();
        let read = |p: &Path| read_mnist(p).and_then(|s| check_classes(s, 10));
        let shape = classes((self.patch_size * self.patch_size) as i64, 10);
        Loaded::images(image_splits(src, read, None)?, &t, &t, shape).finish(spec, src)
    }

    fn sample_form(&self, _shape: &HeadShape, _fitted: &Fitted) -> Form {
        Form::Image { h: 28, w: 28, c: 1, scale: 255.0, transform: self.transform() }
    }
}
