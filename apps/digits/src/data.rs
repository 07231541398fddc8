//! The 8x8 handwritten digits (UCI optdigits as shipped in scikit-learn, CC BY 4.0), compiled
//! into the program from `data/digits/digits.u8` (see `data/digits/README.md`), scaled to
//! [-1, 1], with a fixed split into training and held-out digits.

/// Pixels per digit (8 x 8, row-major).
pub const PIXELS: usize = 64;
/// Side of a digit image.
pub const SIDE: usize = 8;
/// Digit classes 0..9.
pub const CLASSES: usize = 10;
/// Every sixth digit (index % 6 == 5) is held out: never trained on; the verification
/// threshold and the morph pairs come from these.
pub const HOLDOUT_EVERY: usize = 6;

static RAW: &[u8] = include_bytes!("../../../data/digits/digits.u8");

/// Digits as rows of 64 values in [-1, 1] (1 = full ink) and their labels.
pub type Digits = adeis_app_common::labelled::Labelled;

/// All 1797 digits, in the file's order.
pub fn all() -> Digits {
    let mut d = Digits::default();
    for rec in RAW.chunks_exact(PIXELS + 1) {
        let img = rec[..PIXELS]
            .iter()
            .map(|&p| p as f64 / 8.0 - 1.0)
            .collect();
        d.push(img, rec[PIXELS] as usize);
    }
    d
}

/// (training digits, held-out digits).
pub fn split() -> (Digits, Digits) {
    let (mut train, mut held) = (Digits::default(), Digits::default());
    let d = all();
    for (i, (img, l)) in d.images.into_iter().zip(d.labels).enumerate() {
        if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 {
            held.push(img, l);
        } else {
            train.push(img, l);
        }
    }
    (train, held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_digits_are_complete_and_scaled() {
        let d = all();
        assert_eq!(d.len(), 1797);
        assert!(d.images.iter().flatten().all(|v| (-1.0..=1.0).contains(v)));
        // every class is present, roughly 180 each
        for c in 0..CLASSES {
            let n = d.of_class(c).len();
            assert!((170..=190).contains(&n), "class {c}: {n}");
        }
        // the first digit of the UCI file is a 0 whose top row is 0,0,5,13,9,1,0,0
        assert_eq!(d.labels[0], 0);
        let top: Vec<f64> = [0., 0., 5., 13., 9., 1., 0., 0.]
            .iter()
            .map(|p| p / 8.0 - 1.0)
            .collect();
        assert_eq!(&d.images[0][..8], &top[..]);
        let (train, held) = split();
        assert_eq!((train.len(), held.len()), (1498, 299));
    }
}
