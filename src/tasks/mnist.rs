//! `mnist`: the paper's MNIST, 28x28 greyscale digits cut into patches, from IDX files.
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::files::{check_classes, classes, image_splits, read_mnist, Loaded};
use super::images::{Augment, ImageTransform};
use super::samples::Form;
use super::spec::bad;
use super::{DataSources, Fitted, SpecError, Task, TaskData, TaskLimits, TaskSpec};
use crate::model::fpt::HeadShape;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mnist {
    /// The paper's 4x4 (49 tokens of 16); 7 gives 16 tokens of 49, a third of the compute.
    pub patch_size: usize,
    /// Training batches shifted by up to 2 pixels and rotated by up to 10 degrees (no flips: a
    /// mirrored digit is another glyph). Off by default, as the paper; it earns its keep when the
    /// training digits are few enough to be learnt by heart (the suite's 7,200).
    pub augment: bool,
}

impl Default for Mnist {
    fn default() -> Self {
        Self { patch_size: 4, augment: false }
    }
}

impl Mnist {
    /// The evaluation transform; training's adds the augmentation when asked for.
    fn transform(&self) -> ImageTransform {
        ImageTransform { patch: self.patch_size as i64, mean: vec![0.0], std: vec![1.0], augment: None }
    }

    fn train_transform(&self) -> ImageTransform {
        let augment = self.augment.then_some(Augment { crop_padding: 2, flip: false, max_rotation_deg: 10.0 });
        ImageTransform { augment, ..self.transform() }
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
        let read = |p: &Path| read_mnist(p).and_then(|s| check_classes(s, 10));
        let shape = classes((self.patch_size * self.patch_size) as i64, 10);
        Loaded::images(image_splits(src, read, None)?, &self.train_transform(), &self.transform(), shape).finish(spec, src)
    }

    fn sample_form(&self, _shape: &HeadShape, _fitted: &Fitted) -> Form {
        Form::Image { h: 28, w: 28, c: 1, scale: 255.0, transform: self.transform() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::seeded;
    use tch::{Kind, Tensor};

    #[test]
    fn only_an_augmented_task_moves_its_training_digits() {
        let x = seeded(0, || Tensor::rand([4, 28, 28, 1], (Kind::Float, tch::Device::Cpu)));
        let plain = Mnist { patch_size: 7, augment: false };
        let eval = plain.transform().apply(&x, false);
        assert!(plain.train_transform().apply(&x, true).equal(&eval), "no augmentation unless asked for");
        let augmented = Mnist { augment: true, ..plain };
        let train = seeded(1, || augmented.train_transform().apply(&x, true));
        assert_eq!(train.size(), [4, 16, 49]);
        assert!(!train.equal(&eval), "training digits are shifted and rotated");
        assert!(augmented.transform().apply(&x, false).equal(&eval), "evaluation digits are not");
    }
}
