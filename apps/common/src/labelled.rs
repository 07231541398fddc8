//! A labelled set of images, the data every application's experiment reads.

/// Images as rows of values in [-1, 1] and their class labels (the digits, Fashion-MNIST's
/// held-out images).
#[derive(Clone, Debug, Default)]
pub struct Labelled {
    /// The images, each a row of values in [-1, 1].
    pub images: Vec<Vec<f64>>,
    /// Their classes.
    pub labels: Vec<usize>,
}

impl Labelled {
    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Adds an image with its label.
    pub fn push(&mut self, image: Vec<f64>, label: usize) {
        self.images.push(image);
        self.labels.push(label);
    }

    /// Indices of the digits of class `c`.
    pub fn of_class(&self, c: usize) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.labels[i] == c).collect()
    }
}
