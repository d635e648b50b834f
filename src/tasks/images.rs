//! Images to tokens: augmentation (CIFAR-10's random crop, flip, rotation), normalisation, and
//! cutting into patches row by row with the values of a patch in (p1 p2 c) order, as the reference.
use tch::{Kind, Tensor};

#[derive(Debug, Clone)]
pub struct Augment {
    pub crop_padding: i64,
    pub flip: bool,
    pub max_rotation_deg: f64,
}

#[derive(Debug, Clone)]
pub struct ImageTransform {
    pub patch: i64,
    /// Per-channel mean and std applied after augmentation.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Applied to training batches only.
    pub augment: Option<Augment>,
}

impl ImageTransform {
    /// [B, H, W, C] in 0..1 -> [B, (H/p)(W/p), p*p*C].
    pub fn apply(&self, x: &Tensor, train: bool) -> Tensor {
        let x = match (&self.augment, train) {
            (Some(a), true) => augment(x, a),
            _ => x.shallow_clone(),
        };
        let c = x.size()[3];
        let mean = Tensor::from_slice(&self.mean).to_kind(Kind::Float).view([1, 1, 1, c]);
        let std = Tensor::from_slice(&self.std).to_kind(Kind::Float).view([1, 1, 1, c]);
        patchify(&((x - mean) / std), self.patch)
    }
}

/// [B, H, W, C] -> [B, (H/p)(W/p), p*p*C], patches row by row, values (p1 p2 c) within a patch.
pub fn patchify(x: &Tensor, p: i64) -> Tensor {
    let (b, h, w, c) = x.size4().unwrap();
    x.view([b, h / p, p, w / p, p, c]).permute([0, 1, 3, 2, 4, 5]).contiguous().view([b, (h / p) * (w / p), p * p * c])
}

/// Random crop after zero padding, horizontal flip, and rotation, drawn from torch's generator
/// (seeded per step by the engine).
fn augment(x: &Tensor, a: &Augment) -> Tensor {
    let (b, h, w, _) = x.size4().unwrap();
    let mut x = x.permute([0, 3, 1, 2]); // [B, C, H, W]
    if a.crop_padding > 0 {
        let p = a.crop_padding;
        let padded = x.constant_pad_nd([p, p, p, p]);
        let offs = Tensor::randint(2 * p + 1, [b, 2], (Kind::Int64, x.device()));
        let offs: Vec<i64> = Vec::try_from(offs.view([-1])).unwrap();
        let rows: Vec<Tensor> =
            (0..b as usize).map(|i| padded.get(i as i64).narrow(1, offs[2 * i], h).narrow(2, offs[2 * i + 1], w)).collect();
        x = Tensor::stack(&rows, 0);
    }
    if a.flip {
        let flip = Tensor::rand([b], (Kind::Float, x.device())).lt(0.5).view([b, 1, 1, 1]);
        x = x.flip([3]).where_self(&flip, &x);
    }
    if a.max_rotation_deg > 0.0 {
        let angle = (Tensor::rand([b], (Kind::Float, x.device())) * 2.0 - 1.0) * a.max_rotation_deg.to_radians();
        let (cos, sin) = (angle.cos(), angle.sin());
        let zero = Tensor::zeros([b], (Kind::Float, x.device()));
        let theta = Tensor::stack(&[&cos, &(-&sin), &zero, &sin, &cos, &zero], 1).view([b, 2, 3]);
        let size = x.size();
        let grid = Tensor::affine_grid_generator(&theta, size, false);
        // bilinear, zero padding: torchvision's rotate fills with 0.
        x = Tensor::grid_sampler(&x, &grid, 0, 0, false);
    }
    x.permute([0, 2, 3, 1]).contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::seeded;

    #[test]
    fn a_patch_values_land_in_its_token_in_p1_p2_c_order() {
        // 4x4 image, 2 channels, value = 100*row + 10*col + channel.
        let v: Vec<f32> = (0..4).flat_map(|r| (0..4).flat_map(move |c| (0..2).map(move |ch| (100 * r + 10 * c + ch) as f32))).collect();
        let x = Tensor::from_slice(&v).view([1, 4, 4, 2]);
        let t = patchify(&x, 2);
        assert_eq!(t.size(), [1, 4, 8]);
        // Token 1 is the top-right patch: rows 0-1, cols 2-3.
        let tok: Vec<f32> = Vec::try_from(t.get(0).get(1)).unwrap();
        assert_eq!(tok, vec![20., 21., 30., 31., 120., 121., 130., 131.]);
        // Token 2 is the bottom-left patch.
        let tok: Vec<f32> = Vec::try_from(t.get(0).get(2)).unwrap();
        assert_eq!(tok[0], 200.);
    }

    #[test]
    fn augmentation_keeps_shape_and_is_seeded() {
        let t = ImageTransform {
            patch: 4,
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
            augment: Some(Augment { crop_padding: 4, flip: true, max_rotation_deg: 20.0 }),
        };
        // Each seeded draw holds the generator, so other tests' draws cannot fall in between.
        let x = seeded(0, || Tensor::rand([3, 32, 32, 3], (Kind::Float, tch::Device::Cpu)));
        let (a, b) = (seeded(1, || t.apply(&x, true)), seeded(1, || t.apply(&x, true)));
        assert_eq!(a.size(), [3, 64, 48]);
        assert!(a.equal(&b));
        let plain = t.apply(&x, false);
        assert!(!a.equal(&plain), "training batches are augmented");
    }
}
