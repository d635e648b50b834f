//! `cifar10` (the paper's: colour, 4x4 patches, augmented) and `cifar10_lra` (LRA's: greyscale,
//! one pixel per token, 1024 tokens), from the CIFAR-10 binary archive or its batch files.
use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::files::{classes, greyscale, image_splits, read_cifar, Loaded, CIFAR_MEAN, CIFAR_STD};
use super::images::{Augment, ImageTransform};
use super::samples::Form;
use super::{DataSources, Fitted, SpecError, Task, TaskData, TaskLimits, TaskSpec};
use crate::data::cifar::CifarSplit;
use crate::model::fpt::HeadShape;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cifar10 {
    pub augment: bool,
}

impl Default for Cifar10 {
    fn default() -> Self {
        Self { augment: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Cifar10Lra {}

fn plain(patch: i64, grey: bool) -> ImageTransform {
    let (mean, std) = if grey { (vec![0.0], vec![1.0]) } else { (CIFAR_MEAN.to_vec(), CIFAR_STD.to_vec()) };
    ImageTransform { patch, mean, std, augment: None }
}

fn form(patch: i64, grey: bool) -> Form {
    Form::Image { h: 32, w: 32, c: if grey { 1 } else { 3 }, scale: 255.0, transform: plain(patch, grey) }
}

impl Task for Cifar10 {
    fn validate(&self, _limits: &TaskLimits) -> Result<(), SpecError> {
        Ok(())
    }

    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        let aug = self.augment.then_some(Augment { crop_padding: 4, flip: true, max_rotation_deg: 20.0 });
        let eval = plain(4, false);
        let train = ImageTransform { augment: aug, ..eval.clone() };
        let splits = image_splits(src, |p| read_cifar(p, CifarSplit::Train), Some(&|p: &Path| read_cifar(p, CifarSplit::Test)))?;
        Loaded::images(splits, &train, &eval, classes(48, 10)).finish(spec, src)
    }

    fn sample_form(&self, _shape: &HeadShape, _fitted: &Fitted) -> Form {
        form(4, false)
    }
}

impl Task for Cifar10Lra {
    fn validate(&self, _limits: &TaskLimits) -> Result<(), SpecError> {
        Ok(())
    }

    fn load(&self, spec: &TaskSpec, src: &DataSources<'_>) -> Result<TaskData> {
        if src.max_positions < 1024 {
            bail!("task `cifar10_lra` needs 1024 tokens, the backbone has {} positions", src.max_positions);
        }
        let t = plain(1, true);
        let grey = |p: &Path| read_cifar(p, CifarSplit::Train).map(greyscale);
        let grey_test = |p: &Path| read_cifar(p, CifarSplit::Test).map(greyscale);
        let splits = image_splits(src, grey, Some(&grey_test))?;
        Loaded::images(splits, &t, &t, classes(1, 10)).finish(spec, src)
    }

    fn sample_form(&self, _shape: &HeadShape, _fitted: &Fitted) -> Form {
        form(1, true)
    }
}
